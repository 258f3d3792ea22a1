"""Launched workers report themselves: Claude hooks (http, or the stdlib reporter as a command
hook) and Codex notify reach the live API from a real tmux pane, and become ledger rows."""

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command

from runtimes.intake import reporter, tokens, wiring
from runtimes.models import ApiToken, LivenessEvent, ModelSmokeResult, Runtime, WorkerProfile
from tests.conftest import make_ticket, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def reporting_to(live_server, settings, fake_bin):
    settings.CONTROLROOM = {**settings.CONTROLROOM, "URL": live_server.url}
    return live_server


def launch(tmp_path, tmux_socket, provider, model, smoke_passed=False):
    WorkerProfile.objects.create(name=f"{provider}_p", provider=provider, model=model)
    if smoke_passed:  # the limit came after the smoke test
        ModelSmokeResult.objects.create(provider=provider, model=model, ok=True, reason="ok",
                                        host=settings.CONTROLROOM_HOST)  # fmt: skip
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Fix the login bug.")
    ticket = make_ticket()
    call_command("launch_worker", ticket.key, "--profile", f"{provider}_p", "--cwd", str(tmp_path),
                 "--prompt-file", str(prompt), "--tmux-socket", tmux_socket)  # fmt: skip
    return Runtime.objects.get(ticket=ticket)


def hook_events(runtime):
    return list(runtime.events.filter(source=LivenessEvent.Source.HOOK).values_list("to_class", "reason"))


def class_of(runtime):
    runtime.refresh_from_db()
    return runtime.runtime_class


def test_a_claude_worker_asking_permission_is_waiting_input_through_http_hooks(reporting_to, tmux_socket, tmp_path):
    runtime = launch(tmp_path, tmux_socket, "claude", "claude-asks-permission")
    assert wait_for(lambda: class_of(runtime) == "waiting-input", timeout=30)
    assert ("waiting-input", "permission-prompt") in hook_events(runtime)
    assert Runtime.objects.needs_attention().filter(pk=runtime.pk).exists()
    launched = runtime.events.get(source=LivenessEvent.Source.LAUNCH)
    assert launched.observed["reports"] == "http"

    settings_file = run_dir_of(runtime) / "claude-settings.json"
    assert stat.S_IMODE(settings_file.stat().st_mode) == 0o600
    hooks = json.loads(settings_file.read_text())["hooks"]
    assert set(hooks) == set(wiring.CLAUDE_HOOK_EVENTS)
    hook = hooks["Notification"][0]["hooks"][0]
    assert hook["type"] == "http" and hook["url"].endswith(f"/api/v1/runtimes/{runtime.pk}/claude-hook")
    token = hook["headers"]["Authorization"].removeprefix("Bearer ")
    row = ApiToken.objects.get(runtime=runtime)
    assert row.token_hash == tokens.hash_token(token) and row.last_used_at is not None
    assert token not in json.dumps(list(LivenessEvent.objects.values()), default=str)
    assert token not in json.dumps(list(ApiToken.objects.values()), default=str)


def run_dir_of(runtime):
    return Path(runtime.output_path).parent


def test_where_http_hooks_are_refused_the_reporter_posts_as_a_command_hook(reporting_to, tmux_socket, tmp_path,
                                                                           monkeypatch):  # fmt: skip
    monkeypatch.setattr(wiring, "http_hooks_allowed", lambda url: False)
    runtime = launch(tmp_path, tmux_socket, "claude", "claude-session-limit", smoke_passed=True)
    assert wait_for(lambda: ("usage-limited", "usage-limit") in hook_events(runtime), timeout=30)
    hook = json.loads((run_dir_of(runtime) / "claude-settings.json").read_text())["hooks"]["StopFailure"][0]
    assert hook["hooks"][0]["type"] == "command" and "Bearer" not in hook["hooks"][0]["command"]
    assert stat.S_IMODE((run_dir_of(runtime) / "api-token").stat().st_mode) == 0o600
    runtime.refresh_from_db()
    assert runtime.resumes_at is not None and runtime.ticket.failure_reason == ""


def test_a_codex_worker_reports_each_turn_through_notify(reporting_to, tmux_socket, tmp_path, fake_bin):
    runtime = launch(tmp_path, tmux_socket, "codex", "gpt-5.5")
    assert wait_for(lambda: Runtime.objects.get(pk=runtime.pk).reported_reason == "working", timeout=30)
    runtime.refresh_from_db()
    assert runtime.progress_at is not None
    argv = json.loads((fake_bin / "calls.jsonl").read_text().splitlines()[-1])["argv"]
    notify = next(a for a in argv if a.startswith("notify="))
    assert notify.endswith('"codex-notify"]') and "crt_" not in " ".join(argv)


@pytest.mark.parametrize(
    ("url", "addresses", "allowed"),
    [
        ("http://127.0.0.1:8000", [], True),
        ("http://localhost:8000", [], True),
        ("https://[::1]/", [], True),
        ("https://203.0.113.9/", [], True),
        ("http://10.1.2.3:8000", [], False),
        ("http://172.20.0.5:8000", [], False),
        ("http://192.168.1.10", [], False),
        ("http://100.64.0.7", [], False),
        ("http://169.254.1.1", [], False),
        ("http://[fd00::1]/", [], False),
        ("http://controlroom.internal:8000", ["10.0.0.4"], False),
        ("https://controlroom.example.com", ["203.0.113.10"], True),
        ("ftp://127.0.0.1/", [], False),
    ],
)
def test_http_hooks_are_used_only_for_loopback_or_public_addresses(url, addresses, allowed):
    def resolve(host, port, proto=0):
        return [(2, 1, 6, "", (a, port)) for a in addresses]

    assert wiring.http_hooks_allowed(url, resolve=resolve) is allowed


def test_the_reporter_never_fails_the_worker_and_never_prints_its_token(tmp_path):
    token_file = tmp_path / "api-token"
    token_file.write_text("crt_secret-token-value\n")
    done = subprocess.run(
        [sys.executable, reporter.__file__, "--url", "http://127.0.0.1:9/api/v1/runtimes/1/claude-hook",
         "--token-file", str(token_file), "--timeout", "2", "claude-hook"],
        input=b'{"hook_event_name": "Stop"}', capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 0 and b"control room reporter:" in done.stderr
    assert b"crt_secret" not in done.stderr + done.stdout
    bad = subprocess.run(
        [sys.executable, reporter.__file__, "--url", "http://127.0.0.1:9/x", "--token-file", str(token_file),
         "codex-notify", "{not json"], capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    assert bad.returncode == 0 and b"JSONDecodeError" in bad.stderr
