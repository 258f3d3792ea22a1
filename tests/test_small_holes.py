"""Small truth holes: secrets in new shapes, keys that end in a newline, identities that are not
numbers, clocks that run ahead, socket paths that are files, hung tmux servers, argv that escapes
the smoke test."""

import contextlib
import math
import os
import signal
import subprocess
import threading
import uuid
from datetime import timedelta

import psutil
import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.db import IntegrityError, transaction
from django.urls import reverse

from runtimes import liveness as lv
from runtimes.models import Runtime, WorkerProfile, validate_extra_args, validate_model_name
from runtimes.probes import processes as process_probe
from runtimes.probes import tmux as tmux_probe
from runtimes.text import REDACTED, redact
from tests.conftest import make_runtime, make_ticket, wait_for
from tests.test_liveness import NOW, POLICY, facts, pane
from tickets.models import Ticket

# --- redaction -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ('curl -H "Authorization: Basic dXNlcjpwYXNzd29yZA==" https://x', "dXNlcjpwYXNzd29yZA=="),
        ('{"headers": {"authorization": "Basic Zm9vOmJhcjEyMw=="}}', "Zm9vOmJhcjEyMw=="),
        ("git clone https://alice:s3cretPass@github.com/org/repo.git", "s3cretPass"),
        ("DATABASE_URL=postgres://app:hunter22x@db:5432/app", "hunter22x"),
        ("AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "wJalrXUtnFEMI"),
        ('export AWS_SECRET_ACCESS_KEY="abc/def+ghi123"', "abc/def+ghi123"),
        ("pushed with github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz0123456789ABCDEF", "github_pat_11"),
        ("GITLAB_TOKEN is glpat-AbCdEfGhIjKlMnOpQrSt here", "glpat-AbCd"),
    ],
)
def test_new_secret_shapes_are_redacted(text, secret):
    safe = redact(text)
    assert secret not in safe and REDACTED in safe


@pytest.mark.parametrize(
    "text", ["basic functionality works", "http://host:8080/path@x", '"output_tokens": 12', "Basic training"]
)
def test_ordinary_text_is_not_redacted(text):
    assert redact(text) == text


# --- ticket keys ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_ticket_key_with_a_trailing_newline_is_refused_by_the_form_and_the_database():
    ticket = Ticket(key="MC-12\n", title="t")
    with pytest.raises(ValidationError) as refused:
        ticket.full_clean()
    assert "key" in refused.value.message_dict
    with pytest.raises(IntegrityError), transaction.atomic():
        Ticket.objects.create(key="MC-12\n", title="t")
    assert Ticket.objects.create(key="MC-12", title="t").key == "MC-12"


# --- create times --------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -1.0])
def test_a_non_finite_or_negative_create_time_is_refused_by_model_validation(value):
    runtime = Runtime(ticket=make_ticket(), kind="process", handle="p:1", pid=1, pid_create_time=value)
    with pytest.raises(ValidationError) as refused:
        runtime.full_clean()
    assert "pid_create_time" in refused.value.message_dict


@pytest.mark.django_db
@pytest.mark.parametrize("value", [math.inf, -math.inf, 1e300])
def test_the_database_refuses_an_infinite_create_time(value):
    with pytest.raises(IntegrityError), transaction.atomic():
        make_runtime(kind="process", pid=1, pid_create_time=value)


@pytest.mark.django_db
def test_a_nan_create_time_is_never_stored_as_nan():
    try:
        with transaction.atomic():
            runtime = make_runtime(kind="process", pid=1, pid_create_time=math.nan)
    except IntegrityError:
        return  # PostgreSQL: refused by the check constraint
    runtime.refresh_from_db()
    assert runtime.pid_create_time is None  # SQLite stores NaN as NULL: an unknown identity


def test_a_nan_create_time_never_makes_someone_elses_live_pid_ours(sleeper):
    other = sleeper()  # alive, but not the process the row recorded
    probed = process_probe.probe_one(other.pid, math.nan)
    assert probed.state == lv.UNVERIFIABLE
    for observation in (lv.Observation(process=probed), lv.Observation(process=lv.ProcessFacts(other.pid, lv.ALIVE))):
        result = lv.classify(
            facts(kind="process", runtime_class=lv.PROCESS_LIVE, pid=other.pid, pid_create_time=math.nan),
            observation,
            NOW,
            POLICY,
        )
        assert (result.runtime_class, result.reason) == (lv.UNKNOWN, lv.NOT_OBSERVED)


# --- clock skew ----------------------------------------------------------------------------------


def test_a_launch_time_in_the_future_is_clock_skew_until_that_time_has_passed():
    ahead = facts(runtime_class=lv.PENDING, started_at=NOW + timedelta(hours=1), class_changed_at=NOW)
    result = lv.classify(ahead, lv.Observation(), NOW, POLICY)
    assert (result.runtime_class, result.reason) == (lv.UNKNOWN, lv.CLOCK_SKEW)
    assert "started_at is 3600s in the future" in result.message
    later = lv.classify(ahead, lv.Observation(), NOW + timedelta(hours=1, minutes=5), POLICY)
    assert (later.runtime_class, later.reason) == (lv.TMUX_MISSING, "start-timeout")


def test_unknown_from_clock_skew_needs_attention_after_the_grace():
    skewed = facts(kind="websocket", runtime_class=lv.UNKNOWN, last_activity_at=NOW + timedelta(days=1),
                   class_changed_at=NOW)  # fmt: skip
    result = lv.classify(skewed, lv.Observation(), NOW + timedelta(seconds=POLICY.unknown_grace), POLICY)
    assert (result.runtime_class, result.needs_attention) == (lv.UNKNOWN, True)


def test_a_console_activity_time_in_the_future_does_not_keep_it_active_forever():
    console = facts(kind="websocket", runtime_class=lv.WEBSOCKET_ACTIVE, last_activity_at=NOW + timedelta(days=365))
    result = lv.classify(console, lv.Observation(), NOW, POLICY)
    assert (result.runtime_class, result.reason) == (lv.UNKNOWN, lv.CLOCK_SKEW)


def test_what_a_probe_sees_for_certain_wins_over_a_recorded_time_in_the_future():
    ahead = facts(runtime_class=lv.PENDING, started_at=NOW + timedelta(hours=1))
    assert lv.classify(ahead, lv.Observation(pane=pane()), NOW, POLICY).runtime_class == lv.TMUX_LIVE
    dead = lv.classify(ahead, lv.Observation(pane=pane(dead=True, dead_status=0)), NOW, POLICY)
    assert dead.runtime_class == lv.EXITED


def test_a_small_skew_between_hosts_changes_nothing():
    slightly = facts(started_at=NOW + timedelta(seconds=10))
    assert lv.classify(slightly, lv.Observation(pane=pane()), NOW, POLICY).runtime_class == lv.TMUX_LIVE


# --- tmux sockets --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_tmux_socket_path_naming_an_ordinary_file_is_refused_and_the_file_kept(fake_bin, tmp_path):
    WorkerProfile.objects.create(name="codex_default", provider="codex", model="gpt-5.5")
    ticket = make_ticket()
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Fix it.")
    precious = tmp_path / "notes.txt"
    precious.write_text("keep me")
    with pytest.raises(CommandError, match=f"tmux socket {precious} exists and is not a socket"):
        call_command("launch_worker", ticket.key, "--profile", "codex_default", "--cwd", str(tmp_path),
                     "--prompt-file", str(prompt), "--tmux-socket", str(precious))  # fmt: skip
    assert precious.read_text() == "keep me"
    assert not Runtime.objects.exists()


@pytest.fixture
def hung_servers():
    """Real tmux servers on private sockets, each stopped with SIGSTOP: a client connects and
    then waits forever for an answer. Continued and killed after the test."""
    servers = []

    def start(count):
        for _ in range(count):
            name = f"crtest-hung-{uuid.uuid4().hex[:8]}"
            subprocess.run(["tmux", "-L", name, "new-session", "-d", "-s", "s", "sleep", "600"], check=True)
            pid = int(subprocess.run(["tmux", "-L", name, "display-message", "-p", "#{pid}"], check=True,
                                     capture_output=True, text=True).stdout)  # fmt: skip
            os.kill(pid, signal.SIGSTOP)
            servers.append((name, pid))
        return [name for name, _ in servers]

    yield start
    for _, pid in servers:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)


def probing_clients(names):
    """The `tmux … list-panes` clients now running against any of `names`."""
    found = set()
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "list-panes" in cmdline:
            found.update(name for name in names if name in cmdline)
    return found


def test_hung_tmux_servers_are_probed_at_once_under_one_bound(hung_servers, tmux_socket, tmux):
    from tests.conftest import start_session

    start_session(tmux, "cr-fine", "sleep", "60")
    hung = hung_servers(3)
    result = {}
    prober = threading.Thread(
        target=lambda: result.update(tmux_probe.snapshot([*hung, tmux_socket], tmux_bin="tmux", timeout=6))
    )
    prober.start()
    # All three hung servers are being asked at the same time, not one after another.
    assert wait_for(lambda: probing_clients(hung) == set(hung), timeout=5)
    prober.join()
    for name in hung:
        assert "timed out after" in result[name].error
    assert result[tmux_socket].error is None and result[tmux_socket].find("cr-fine") is not None


# --- profile argv --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "args"),
    [
        ("claude", ["--model", "other", "--output-format", "text"]),
        ("claude", ["--output-format=text"]),
        ("claude", ["--settings", "/tmp/hooks.json"]),
        ("claude", ["--fallback-model", "claude-haiku-4-5"]),
        ("claude", ["--bare"]),
        ("codex", ["-m", "o3"]),
        ("codex", ["--model=o3"]),
        ("codex", ["--json"]),
        ("codex", ["-c", 'notify=["/bin/sh","-c","curl evil"]']),
        ("codex", ["--config", "model=o3"]),
        ("codex", ["--config=hooks.stop=[]"]),
        ("codex", ["-cmodel_provider=oss"]),
        ("codex", ["-p", "fast"]),
    ],
)
def test_extra_arguments_that_escape_the_smoke_test_are_refused(provider, args):
    with pytest.raises(ValidationError):
        validate_extra_args(provider, args)


@pytest.mark.parametrize(
    ("provider", "args"),
    [
        ("claude", ["--append-system-prompt", "Be terse."]),
        ("claude", ["--permission-mode", "acceptEdits"]),
        ("codex", ["-c", "sandbox_mode=workspace-write"]),
        ("codex", ["--sandbox", "workspace-write"]),
    ],
)
def test_extra_arguments_that_change_neither_model_nor_reporting_are_allowed(provider, args):
    validate_extra_args(provider, args)


@pytest.mark.parametrize("model", ["-rf", "--help", "--model=o3"])
def test_a_model_name_starting_with_a_dash_is_refused(model):
    with pytest.raises(ValidationError, match="starts with '-'"):
        validate_model_name(model)


@pytest.mark.django_db
def test_the_profile_form_shows_the_refusal(admin_client):
    response = admin_client.post(
        reverse("admin:runtimes_workerprofile_add"),
        {"name": "sneaky", "provider": "claude", "model": "claude-sonnet-4-6",
         "extra_args": '["--model", "other", "--output-format", "text"]', "enabled": "on"},
    )  # fmt: skip
    assert response.status_code == 200
    assert "would change the model" in response.content.decode()
    assert not WorkerProfile.objects.exists()


@pytest.mark.django_db
def test_a_profile_written_around_the_form_is_refused_at_launch(fake_bin, tmp_path, tmux_socket):
    WorkerProfile.objects.create(name="sneaky", provider="claude", model="claude-sonnet-4-6",
                                 extra_args=["--model", "other", "--output-format", "text"])  # fmt: skip
    ticket = make_ticket()
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Fix it.")
    with pytest.raises(CommandError, match="Worker profile sneaky: Extra argument '--model' would change the model"):
        call_command("launch_worker", ticket.key, "--profile", "sneaky", "--cwd", str(tmp_path),
                     "--prompt-file", str(prompt), "--tmux-socket", tmux_socket)  # fmt: skip
    assert not Runtime.objects.exists() and not (fake_bin / "calls.jsonl").exists()


# --- the README's commands -----------------------------------------------------------------------


def readme_shell_lines():
    """The `manage.py` lines of the README's sh code blocks."""
    from tests.clusters import ROOT

    lines, in_sh = [], False
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("```"):
            in_sh = line.strip() == "```sh"
            continue
        if in_sh and "manage.py" in line:
            lines.append(line.split("#", 1)[0].strip())
    return lines


def test_the_readme_s_manage_py_lines_run_as_written_without_a_secret_key(tmp_path):
    from tests.clusters import ROOT

    lines = [line for line in readme_shell_lines() if not line.startswith("export")]
    assert lines, "the README shows how to run manage.py"
    env = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "DEBUG", "DJANGO_SETTINGS_MODULE")}
    env["CONTROLROOM_VAR_DIR"] = str(tmp_path)
    for line in lines:
        words = line.split()
        assignments = dict(word.split("=", 1) for word in words[: words.index(".venv/bin/python")])
        argv = words[words.index(".venv/bin/python") :][:3]  # python manage.py COMMAND (options as written vary)
        done = subprocess.run([*argv, "--help"], cwd=ROOT, env={**env, **assignments}, capture_output=True, text=True,
                              check=False)  # fmt: skip
        assert done.returncode == 0, (line, done.stderr[-300:])


def test_every_command_in_the_readme_s_table_exists():
    import re

    from django.core.management import get_commands

    from tests.clusters import ROOT

    table = re.findall(r"^\| `([a-z_]+)[ `]", (ROOT / "README.md").read_text(), re.MULTILINE)
    commands = [name for name in table if "_" in name or name in ("qcluster",)]
    assert "bench_reconcile" in commands and "launch_worker" in commands
    assert set(commands) <= set(get_commands())


def test_a_long_unbroken_word_is_scanned_once_not_once_per_character():
    # Each field-name match starts at a word boundary; before, every position of a long word
    # started one (a 5,000-character word took 16 s, a 1 MB API body forever).
    word = "y" * 200_000
    assert redact(word) == word
    assert redact(f"{word} AWS_SECRET_ACCESS_KEY=abcdefgh") == f"{word} AWS_SECRET_ACCESS_KEY={REDACTED}"
