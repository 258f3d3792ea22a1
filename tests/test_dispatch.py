import json
from datetime import timedelta

import psutil
import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from runtimes.models import LivenessEvent, ModelSmokeResult, Runtime, WorkerProfile
from runtimes.probes.processes import create_time_of
from runtimes.reconcile import reconcile
from tests.conftest import make_runtime, make_ticket, start_session, wait_for
from tickets.models import Ticket

pytestmark = pytest.mark.django_db


def calls(fake_bin):
    path = fake_bin / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def model_calls(fake_bin):
    """Calls that ran a model (not --version / login status)."""
    return [c for c in calls(fake_bin) if "-p" in c["argv"] or "exec" in c["argv"]]


def sessions(tmux):
    done = tmux.cmd("list-sessions", "-F", "#{session_name}")
    return done.stdout if done.returncode == 0 else []


@pytest.fixture
def launch_args(tmp_path, tmux_socket):
    def build(ticket, profile, prompt="Fix the login bug."):
        prompt_file = tmp_path / "prompt.txt"
        prompt_file.write_bytes(prompt.encode() if isinstance(prompt, str) else prompt)
        return [ticket.key, "--profile", profile, "--cwd", str(tmp_path), "--prompt-file", str(prompt_file),
                "--tmux-socket", tmux_socket]  # fmt: skip

    return build


def profile(name="codex_default", provider="codex", model="gpt-5.5", **fields):
    return WorkerProfile.objects.create(name=name, provider=provider, model=model, **fields)


def test_codex_mini_is_refused_under_chatgpt_without_calling_the_model(fake_bin, capsys):
    with pytest.raises(SystemExit) as exited:
        call_command("smoke_model", "codex", "codex-mini-latest")
    assert exited.value.code == 1
    out = capsys.readouterr().out
    assert "does NOT work (unsupported-model)" in out and "gpt-5.5" in out
    result = ModelSmokeResult.objects.get()
    assert (result.ok, result.reason, result.auth_mode, result.cli_version) == (
        False, "unsupported-model", "chatgpt", "codex-cli 0.169.0"
    )  # fmt: skip
    assert model_calls(fake_bin) == []


def test_an_api_key_login_may_use_api_only_models(fake_bin, capsys):
    (fake_bin / "auth_mode").write_text("apikey")
    call_command("smoke_model", "codex", "codex-mini-latest", "--json")
    result = json.loads(capsys.readouterr().out)
    assert (result["ok"], result["reason"], result["auth_mode"]) == (True, "ok", "apikey")
    assert "sk-proj" not in json.dumps(result)
    stored = ModelSmokeResult.objects.get()
    assert "sk-proj" not in f"{stored.auth_mode} {stored.message} {stored.cli_version}"


def test_smoke_reports_a_missing_login(fake_bin):
    (fake_bin / "auth_mode").write_text("none")
    with pytest.raises(SystemExit):
        call_command("smoke_model", "codex", "gpt-5.5")
    assert ModelSmokeResult.objects.get().reason == "auth-missing"


def test_smoke_finds_a_model_the_api_rejects(fake_bin):
    with pytest.raises(SystemExit):
        call_command("smoke_model", "claude", "claude-bad-model")
    result = ModelSmokeResult.objects.get()
    assert (result.ok, result.reason) == (False, "unsupported-model")
    assert "not_found_error" in result.message


def test_smoke_of_a_working_claude_model_exits_zero(fake_bin, capsys):
    call_command("smoke_model", "claude", "claude-opus-4-7")
    assert "claude claude-opus-4-7: works" in capsys.readouterr().out
    argv = model_calls(fake_bin)[0]["argv"]
    assert argv[argv.index("--model") + 1] == "claude-opus-4-7"


def test_smoke_times_out_on_a_hanging_cli(fake_bin, settings):
    settings.CONTROLROOM = {**settings.CONTROLROOM, "SMOKE_TIMEOUT": 1.0}
    with pytest.raises(SystemExit):
        call_command("smoke_model", "claude", "claude-hang")
    assert ModelSmokeResult.objects.get().reason == "timeout"


def test_smoke_says_when_the_cli_is_missing(settings, tmp_path):
    settings.CONTROLROOM = {**settings.CONTROLROOM, "CODEX_BIN": str(tmp_path / "no-codex")}
    with pytest.raises(SystemExit):
        call_command("smoke_model", "codex", "gpt-5.5")
    result = ModelSmokeResult.objects.get()
    assert result.reason == "cli-missing" and "CONTROLROOM_CODEX_BIN" in result.message


def test_smoke_refuses_an_unknown_provider_before_running_anything(fake_bin):
    with pytest.raises(CommandError, match="Unknown provider 'gemini'"):
        call_command("smoke_model", "gemini", "x")
    assert not ModelSmokeResult.objects.exists() and calls(fake_bin) == []


def test_launch_with_an_unsupported_model_stops_before_any_tmux_session(fake_bin, tmux, launch_args):
    ticket = make_ticket()
    profile(model="codex-mini-latest")
    with pytest.raises(CommandError, match="unsupported-model"):
        call_command("launch_worker", *launch_args(ticket, "codex_default"))
    assert sessions(tmux) == []
    assert not Runtime.objects.exists()
    assert ModelSmokeResult.objects.get().reason == "unsupported-model"
    assert "launch refused" in Ticket.objects.get(pk=ticket.pk).note


def test_launch_aborts_when_the_smoke_test_finds_the_model_unsupported(fake_bin, tmux, launch_args):
    ticket = make_ticket()
    profile(name="claude_bad", provider="claude", model="claude-bad-model")
    with pytest.raises(CommandError, match="Refused to launch claude_bad"):
        call_command("launch_worker", *launch_args(ticket, "claude_bad"))
    assert sessions(tmux) == [] and not Runtime.objects.exists()


def test_a_passing_launch_creates_one_session_running_the_exact_model(fake_bin, tmux, launch_args):
    ticket = make_ticket()
    profile(name="claude_opus", provider="claude", model="claude-opus-4-7", max_turns=30)
    call_command("launch_worker", *launch_args(ticket, "claude_opus"))

    runtime = Runtime.objects.get()
    assert sessions(tmux) == [runtime.tmux_target]
    assert (runtime.runtime_class, runtime.provider, runtime.model, runtime.host) == (
        "pending", "claude", "claude-opus-4-7", "test-host"
    )  # fmt: skip
    assert runtime.pid and runtime.pid_create_time
    assert len(runtime.launch_token) == 32  # the session carries the launch's own mark
    assert tmux.cmd("show-options", "-t", f"={runtime.tmux_target}:", "-v", "@controlroom").stdout == [
        runtime.launch_token
    ]
    assert list(runtime.events.values_list("source", "to_class")) == [("launch", "pending")]
    start = tmux.cmd("display-message", "-p", "-t", runtime.tmux_target, "#{pane_start_command}").stdout[0]
    assert "--model claude-opus-4-7" in start
    assert wait_for(lambda: len(model_calls(fake_bin)) == 2)  # the smoke test, then the worker
    worker = model_calls(fake_bin)[-1]["argv"]
    assert worker[worker.index("--model") + 1] == "claude-opus-4-7"
    assert worker[worker.index("--max-turns") + 1] == "30"
    assert "stream-json" in worker and "--verbose" in worker

    assert wait_for(lambda: (reconcile(), Runtime.objects.get().runtime_class == "exited")[1])
    runtime.refresh_from_db()
    assert (runtime.exit_outcome, runtime.exit_code) == ("completed", 0)


def test_a_recent_passing_smoke_result_is_reused(fake_bin, tmux, launch_args):
    ticket = make_ticket()
    profile(name="codex_default")
    ModelSmokeResult.objects.create(provider="codex", model="gpt-5.5", ok=True, reason="ok", host="test-host")
    call_command("launch_worker", *launch_args(ticket, "codex_default"))
    assert ModelSmokeResult.objects.count() == 1
    assert not [c for c in calls(fake_bin) if c["argv"][1:3] == ["login", "status"]]


def test_an_old_smoke_result_is_not_reused(fake_bin, tmux, launch_args):
    ticket = make_ticket()
    profile(name="codex_default")
    old = timezone.now() - timedelta(days=2)
    ModelSmokeResult.objects.create(
        provider="codex", model="gpt-5.5", ok=True, reason="ok", host="test-host", checked_at=old
    )
    call_command("launch_worker", *launch_args(ticket, "codex_default"))
    assert ModelSmokeResult.objects.count() == 2


def test_the_prompt_reaches_the_cli_byte_for_byte_and_runs_nothing(fake_bin, tmux, launch_args, tmp_path):
    marker = tmp_path / "pwned"
    prompt = f"Fix it $(touch {marker}) `touch {marker}` ; touch {marker}\n'quotes' \"double\" \\back\nline 3 ✓\n"
    ticket = make_ticket()
    profile(name="codex_default")
    call_command("launch_worker", *launch_args(ticket, "codex_default", prompt))
    assert wait_for(lambda: len(model_calls(fake_bin)) == 2)
    assert model_calls(fake_bin)[-1]["stdin"] == prompt
    assert not marker.exists()


def test_bad_launch_input_is_a_clear_error_and_writes_nothing(fake_bin, tmux, launch_args, tmp_path):
    ticket = make_ticket()
    profile(name="codex_default")
    cases = [
        (["MC-999999", "--profile", "codex_default"], "No ticket 'MC-999999'"),
        ([ticket.key, "--profile", "nope"], "No worker profile 'nope'"),
    ]
    good = launch_args(ticket, "codex_default")
    for head, message in cases:
        with pytest.raises(CommandError, match=message):
            call_command("launch_worker", *head, *good[3:])
    with pytest.raises(CommandError, match="is not a directory"):
        call_command("launch_worker", *good[:3], "--cwd", str(tmp_path / "missing"), *good[5:])
    with pytest.raises(CommandError, match="Cannot read --prompt-file"):
        call_command("launch_worker", *good[:5], "--prompt-file", str(tmp_path / "none.txt"), *good[7:])
    closed = make_ticket(state="done")
    with pytest.raises(CommandError, match="reopen it"):
        call_command("launch_worker", *launch_args(closed, "codex_default"))
    assert not Runtime.objects.exists() and sessions(tmux) == [] and calls(fake_bin) == []


def test_stop_worker_kills_the_session_and_records_a_controller_kill(tmux, tmux_socket, capsys):
    pid = start_session(tmux, "cr-mc-1-aa", "sleep", "60", mark="m1")
    ticket = make_ticket(failure_reason="")
    runtime = make_runtime(ticket=ticket, tmux_socket=tmux_socket, tmux_target="cr-mc-1-aa", pid=pid,
                           pid_create_time=create_time_of(pid), launch_token="m1",
                           runtime_class="tmux-live")  # fmt: skip
    call_command("stop_worker", runtime.handle, "--by", "maria")
    runtime.refresh_from_db()
    assert (runtime.runtime_class, runtime.controller_action) == ("killed-by-controller", "kill")
    assert "stopped by maria" in runtime.class_message
    assert "cr-mc-1-aa" not in sessions(tmux)
    assert Ticket.objects.get(pk=ticket.pk).failure_reason == ""
    event = runtime.events.get()
    assert (event.source, event.reason) == ("controller", "controller-kill")
    reconcile()
    runtime.refresh_from_db()
    assert runtime.runtime_class == "killed-by-controller"  # a kill never reads as a failure later


def test_stop_worker_terminates_a_background_process(sleeper):
    process = sleeper()
    runtime = make_runtime(kind="process", pid=process.pid, pid_create_time=create_time_of(process.pid),
                           runtime_class="process-live")  # fmt: skip
    call_command("stop_worker", runtime.handle)
    # stop_worker waits for (and so reaps) the process; it must be gone, not merely signalled.
    assert wait_for(lambda: not psutil.pid_exists(process.pid))
    runtime.refresh_from_db()
    assert runtime.runtime_class == "killed-by-controller"


def test_stop_worker_never_signals_a_reused_pid(sleeper):
    stranger = sleeper()
    runtime = make_runtime(kind="process", pid=stranger.pid, pid_create_time=1.0, runtime_class="process-live")
    call_command("stop_worker", runtime.handle)
    assert stranger.poll() is None
    runtime.refresh_from_db()
    assert "not signalled" in runtime.class_message


def test_reap_stops_workers_of_closed_tickets_and_orphan_sessions(tmux, tmux_socket, capsys):
    start_session(tmux, "cr-mc-2-bb", "sleep", "60", mark="m2")
    start_session(tmux, "cr-mc-3-cc", "sleep", "60", mark="m3")  # nobody owns it
    start_session(tmux, "someone-elses", "sleep", "60")  # not Control Room's
    done = make_ticket(key="MC-2", state="done")
    make_ticket(key="MC-3")
    owned = make_runtime(ticket=done, tmux_socket=tmux_socket, tmux_target="cr-mc-2-bb", launch_token="m2",
                         runtime_class="tmux-live")  # fmt: skip

    call_command("reap_workers", "--dry-run", "--tmux-socket", tmux_socket)
    out = capsys.readouterr().out
    assert "2 worker(s) would be stopped." in out
    assert sorted(sessions(tmux)) == ["cr-mc-2-bb", "cr-mc-3-cc", "someone-elses"]

    call_command("reap_workers", "--tmux-socket", tmux_socket)
    assert sessions(tmux) == ["someone-elses"]
    owned.refresh_from_db()
    assert owned.runtime_class == "killed-by-controller"
    orphan = Runtime.objects.get(tmux_target="cr-mc-3-cc")
    assert (orphan.ticket.key, orphan.runtime_class) == ("MC-3", "killed-by-controller")
    assert LivenessEvent.objects.filter(reason="controller-kill").count() == 2
    assert not Ticket.objects.exclude(failure_reason="").exists()


def test_stop_action_in_the_admin_reports_how_many_changed(admin_client, tmux, tmux_socket):
    start_session(tmux, "cr-mc-4-dd", "sleep", "60", mark="m4")
    runtime = make_runtime(tmux_socket=tmux_socket, tmux_target="cr-mc-4-dd", launch_token="m4",
                           runtime_class="tmux-live")  # fmt: skip
    asked = admin_client.post("/admin/runtimes/runtime/", {"action": "stop_workers", "_selected_action": [runtime.pk]})
    assert "Yes, stop it" in asked.content.decode()  # the confirmation page; nothing stopped yet
    runtime.refresh_from_db()
    assert runtime.runtime_class == "tmux-live"
    response = admin_client.post(
        "/admin/runtimes/runtime/",
        {"action": "stop_workers", "_selected_action": [runtime.pk], "post": "yes"},
        follow=True,
    )
    assert "Stopped 1 runtime(s)." in response.content.decode()
    runtime.refresh_from_db()
    assert runtime.runtime_class == "killed-by-controller"


def test_one_worker_that_cannot_be_stopped_never_stops_the_sweep(tmux, tmux_socket, monkeypatch, capsys):
    from runtimes.runs import controller

    start_session(tmux, "cr-mc-5-ee", "sleep", "60", mark="m5")
    start_session(tmux, "cr-mc-6-ff", "sleep", "60", mark="m6")
    stuck = make_runtime(ticket=make_ticket(key="MC-5", state="done"), tmux_socket=tmux_socket,
                         tmux_target="cr-mc-5-ee", launch_token="m5", runtime_class="tmux-live")  # fmt: skip
    fine = make_runtime(ticket=make_ticket(key="MC-6", state="cancelled"), tmux_socket=tmux_socket,
                        tmux_target="cr-mc-6-ff", launch_token="m6", runtime_class="tmux-live")  # fmt: skip
    real_kill = controller._kill_tmux_session

    def kill(socket, target):
        if target == "cr-mc-5-ee":
            raise controller.ControllerError("tmux kill-session cr-mc-5-ee failed: permission denied")
        return real_kill(socket, target)

    monkeypatch.setattr(controller, "_kill_tmux_session", kill)
    with pytest.raises(CommandError, match="1 worker\\(s\\) could not be stopped"):
        call_command("reap_workers", "--tmux-socket", tmux_socket)
    assert "could not stop tmux:" in capsys.readouterr().err
    stuck.refresh_from_db()
    fine.refresh_from_db()
    assert (stuck.runtime_class, fine.runtime_class) == ("tmux-live", "killed-by-controller")


def test_a_stopped_worker_whose_session_cannot_be_killed_is_still_a_controller_kill(tmux, tmux_socket, monkeypatch):
    from runtimes.runs import controller

    pid = start_session(tmux, "cr-mc-7-aa", "sleep", "60", mark="m7")
    runtime = make_runtime(tmux_socket=tmux_socket, tmux_target="cr-mc-7-aa", pid=pid, launch_token="m7",
                           pid_create_time=create_time_of(pid), runtime_class="tmux-live")  # fmt: skip

    def refuse(socket, target):
        raise controller.ControllerError("tmux kill-session cr-mc-7-aa failed: server busy")

    monkeypatch.setattr(controller, "_kill_tmux_session", refuse)
    call_command("stop_worker", runtime.handle)
    runtime.refresh_from_db()
    assert runtime.runtime_class == "killed-by-controller"
    assert "session left behind" in runtime.class_message
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    reconcile()
    runtime.refresh_from_db()
    assert (runtime.runtime_class, runtime.exit_outcome) == ("killed-by-controller", "")


def test_reap_costs_the_same_whatever_the_history(tmux, tmux_socket):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from runtimes.runs.controller import plan_reap

    start_session(tmux, "cr-mc-8-aa", "sleep", "60")
    owner = make_runtime(ticket=make_ticket(key="MC-8"), tmux_socket=tmux_socket, tmux_target="cr-mc-8-aa:0.0",
                         runtime_class="tmux-live")  # fmt: skip

    def queries():
        with CaptureQueriesContext(connection) as captured:
            plan = plan_reap("test-host", [tmux_socket])
        assert plan.orphans == [] and plan.runtimes == []  # a pane-form target owns its session
        return len(captured)

    for i in range(5):
        make_runtime(ticket=owner.ticket, tmux_socket=f"old-{i}", tmux_target=f"cr-mc-8-h{i}", runtime_class="exited")
    few = queries()
    for i in range(5, 60):
        make_runtime(ticket=owner.ticket, tmux_socket=f"old-{i}", tmux_target=f"cr-mc-8-h{i}", runtime_class="exited")
    assert queries() == few


def test_an_unwritable_run_dir_is_a_clear_error_and_starts_nothing(fake_bin, tmux, launch_args, tmp_path, settings):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    settings.CONTROLROOM = {**settings.CONTROLROOM, "RUN_DIR": blocker / "runs"}
    profile(name="codex_default")
    with pytest.raises(CommandError, match="Cannot write the worker's files under CONTROLROOM_RUN_DIR"):
        call_command("launch_worker", *launch_args(make_ticket(), "codex_default"))
    assert sessions(tmux) == [] and not Runtime.objects.exists()


def test_a_tmux_failure_leaves_no_run_dir_behind(fake_bin, tmux, launch_args, settings, tmp_path):
    settings.CONTROLROOM = {**settings.CONTROLROOM, "TMUX_BIN": str(tmp_path / "no-tmux")}
    profile(name="codex_default")
    with pytest.raises(CommandError, match="tmux binary not found"):
        call_command("launch_worker", *launch_args(make_ticket(), "codex_default"))
    assert list(settings.CONTROLROOM["RUN_DIR"].iterdir()) == []


def test_a_database_failure_after_the_session_started_stops_it_and_says_so(fake_bin, tmux, launch_args, monkeypatch):
    from django.db import OperationalError

    profile(name="codex_default")

    def broken(*args, **kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(LivenessEvent.objects, "create", broken)
    with pytest.raises(CommandError, match="the tmux session was stopped and nothing was recorded"):
        call_command("launch_worker", *launch_args(make_ticket(), "codex_default"))
    assert sessions(tmux) == [] and not Runtime.objects.exists()
