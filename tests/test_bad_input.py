"""Every operator mistake gets a one-line message that says what to do, and writes nothing."""

import json
import subprocess
import sys

import pytest
from django.core.management import CommandError, call_command
from django_q.models import Schedule

from runtimes.models import LivenessEvent, ModelSmokeResult, Runtime
from runtimes.text import REDACTED, safe_text
from tests.clusters import ROOT, migrate_sqlite
from tests.conftest import make_runtime, make_ticket, pane_is_dead, start_session, wait_for
from tickets.models import Ticket, Verdict

pytestmark = pytest.mark.django_db

BAD_CALLS = [
    (("harvest_runtime", "tmux:nope"), "No runtime with handle 'tmux:nope'"),
    (("recover_runtime", "ws:nope"), "No runtime with handle 'ws:nope'"),
    (("stop_worker", "hermes-bg:proc_000000000000"), "No runtime with handle"),
    (("stop_worker", "tmux:shared"), "exists on several hosts; add --host"),
    (("classify_output", "--provider", "claude", "/nonexistent/log"), "Cannot read /nonexistent/log"),
    (("classify_output", "--provider", "gemini", "-"), "invalid choice: 'gemini'"),
    (("smoke_model", "gemini", "x"), "Unknown provider 'gemini': use claude or codex."),
    (("smoke_model", "codex", "gpt 5"), "Invalid model name 'gpt 5'"),
    (("smoke_model", "codex", ""), "Invalid model name ''"),
    (("reconcile_runtimes", "--interval", "-1", "--watch"), "--interval must be a positive number"),
    (("reconcile_runtimes", "--interval", "soon"), "invalid float value: 'soon'"),
    (("setup_schedules", "--minutes", "0"), "--minutes must be a whole number"),
    (("launch_worker", "MC-1", "--profile", "p", "--cwd", "/", "--prompt-file", "/x"), "No ticket 'MC-1'"),
    (("ensure_local_admin",), "for local runs (DEBUG=1)"),
]


def counts():
    return [m.objects.count() for m in (Ticket, Runtime, LivenessEvent, Verdict, ModelSmokeResult, Schedule)]


@pytest.mark.parametrize("args, message", BAD_CALLS, ids=[" ".join(a) for a, _ in BAD_CALLS])
def test_bad_command_input_is_a_clear_error_that_writes_nothing(args, message):
    ticket = make_ticket()
    make_runtime(ticket=ticket, handle="tmux:shared", host="a")
    make_runtime(ticket=ticket, handle="tmux:shared", host="b")
    before = counts()
    with pytest.raises(CommandError) as caught:
        call_command(*args)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value).strip()
    assert counts() == before


def test_a_command_error_exits_non_zero_with_one_line_and_no_traceback(tmp_path):
    env = {"DJANGO_SETTINGS_MODULE": "controlroom.settings_test", "DATABASE_URL": f"sqlite:///{tmp_path}/x.db",
           "PATH": "/usr/bin:/bin"}  # fmt: skip
    migrate_sqlite(tmp_path / "x.db")
    done = subprocess.run([sys.executable, "manage.py", "harvest_runtime", "tmux:nope"], cwd=ROOT, env=env,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "CommandError: No runtime with handle 'tmux:nope'. Check the handle in the admin's runtime list."
    ]


def test_secrets_and_long_text_are_redacted_and_bounded():
    text = (
        "key sk-ant-api03-AbCdEf0123456789xyz and Authorization: Bearer abcdef0123456789abcdef "
        '{"access_token": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.sig", "refresh_token":"rt-123456789"} '
        "OPENAI_API_KEY=sk-proj-0123456789abcdefghij ghp_0123456789abcdefghijABCDEFGHIJ"
    )
    safe = safe_text(text + " tail" + "x" * 5000, limit=400)
    for secret in ("sk-ant-api03", "abcdef0123456789abcdef", "eyJhbGci", "rt-123456789", "sk-proj-0123", "ghp_0123"):
        assert secret not in safe
    assert safe.count(REDACTED) >= 5
    assert len(safe) == 400


def test_worker_output_with_secrets_never_reaches_the_database(tmux, tmux_socket, tmp_path):
    log = tmp_path / "out.jsonl"
    secret = "sk-ant-api03-SECRETSECRETSECRET"
    result = {"type": "result", "subtype": "success", "is_error": True, "num_turns": 1,
              "result": f"API Error: 401 invalid x-api-key {secret} " + "y" * 10_000}  # fmt: skip
    log.write_text(json.dumps(result) + "\n")
    start_session(tmux, "cr-leak", "sh", "-c", "exit 1")
    assert wait_for(lambda: pane_is_dead(tmux, "cr-leak"))
    runtime = make_runtime(tmux_socket=tmux_socket, tmux_target="cr-leak", provider="claude", output_path=str(log),
                           runtime_class="tmux-live")  # fmt: skip
    from runtimes.reconcile import reconcile

    reconcile()
    runtime.refresh_from_db()
    ticket = Ticket.objects.get(pk=runtime.ticket_id)
    event = runtime.events.get()
    assert runtime.exit_outcome == "failed"
    for stored in (runtime.class_message, ticket.failure_reason, event.message, json.dumps(event.observed)):
        assert secret not in stored
        assert len(stored) <= 4000
