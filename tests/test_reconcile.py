import json
import os
import signal
import subprocess
import sys
from datetime import timedelta

import libtmux
import psutil
import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from runtimes.models import LivenessEvent, ReconcilerHeartbeat, Runtime, RuntimeClass
from runtimes.probes.processes import create_time_of
from runtimes.reconcile import reconcile
from tests.clusters import migrate_sqlite
from tests.conftest import make_runtime, make_ticket, pane_is_dead, start_session, wait_for
from tickets.models import Ticket

pytestmark = pytest.mark.django_db


def tmux_runtime(socket, session, **fields):
    fields.setdefault("runtime_class", RuntimeClass.TMUX_LIVE)
    return make_runtime(tmux_socket=socket, tmux_target=session, **fields)


def process_runtime(process, **fields):
    fields.setdefault("runtime_class", RuntimeClass.PROCESS_LIVE)
    return make_runtime(
        kind="process",
        handle=f"hermes-bg:proc_{os.urandom(6).hex()}",
        pid=process.pid,
        pid_create_time=create_time_of(process.pid),
        **fields,
    )


def refreshed(runtime):
    runtime.refresh_from_db()
    return runtime


def test_live_pane_is_tmux_live(tmux, tmux_socket):
    start_session(tmux, "cr-live", "sleep", "60")
    runtime = make_runtime(tmux_socket=tmux_socket, tmux_target="cr-live")  # pending
    reconcile()
    runtime = refreshed(runtime)
    assert (runtime.runtime_class, runtime.class_reason) == ("tmux-live", "pane-alive")
    assert runtime.last_seen_at is not None
    assert list(runtime.events.values_list("from_class", "to_class")) == [("pending", "tmux-live")]


def test_killed_session_is_tmux_missing_with_a_banner_on_a_working_ticket(tmux, tmux_socket):
    start_session(tmux, "cr-doomed", "sleep", "60")
    runtime = tmux_runtime(tmux_socket, "cr-doomed")
    reconcile()
    assert refreshed(runtime).runtime_class == "tmux-live"
    tmux.cmd("kill-session", "-t", "cr-doomed")
    reconcile()
    runtime = refreshed(runtime)
    assert (runtime.runtime_class, runtime.class_reason) == ("tmux-missing", "session-missing")
    assert "session missing" in runtime.ticket.failure_reason
    assert Runtime.objects.needs_attention().filter(pk=runtime.pk).exists()


@pytest.mark.parametrize(
    "argv, code, sig",
    [(("sh", "-c", "exit 0"), 0, None), (("sh", "-c", "exit 3"), 3, None), (("sh", "-c", "kill -TERM $$"), None, 15)],
)
def test_dead_pane_is_exited_with_its_status_or_signal(tmux, tmux_socket, argv, code, sig):
    start_session(tmux, "cr-ends", *argv)
    assert wait_for(lambda: pane_is_dead(tmux, "cr-ends"))
    runtime = tmux_runtime(tmux_socket, "cr-ends")
    reconcile()
    runtime = refreshed(runtime)
    assert runtime.runtime_class == "exited"
    assert (runtime.exit_code, runtime.exit_signal) == (code, sig)
    assert runtime.ended_at is not None
    assert runtime.exit_outcome == ("completed" if code == 0 else "failed")


def test_live_terminated_and_zombie_processes(sleeper):
    alive = process_runtime(sleeper())
    terminated_process = sleeper()
    terminated = process_runtime(terminated_process)
    terminated_process.terminate()
    terminated_process.wait()
    zombie_process = subprocess.Popen([sys.executable, "-c", "pass"])
    zombie = process_runtime(zombie_process)
    assert wait_for(lambda: psutil.Process(zombie_process.pid).status() == psutil.STATUS_ZOMBIE)
    try:
        reconcile()
    finally:
        zombie_process.wait()
    assert refreshed(alive).runtime_class == "process-live"
    assert (refreshed(terminated).runtime_class, terminated.class_reason) == ("process-dead", "process-exited")
    assert (refreshed(zombie).runtime_class, zombie.class_reason) == ("process-dead", "process-zombie")


def test_a_reused_pid_means_our_process_is_dead(sleeper):
    stranger = sleeper()
    runtime = process_runtime(stranger)
    Runtime.objects.filter(pk=runtime.pk).update(pid_create_time=create_time_of(stranger.pid) - 7200)
    reconcile()
    runtime = refreshed(runtime)
    assert (runtime.runtime_class, runtime.class_reason) == ("process-dead", "pid-reused")
    assert psutil.pid_exists(stranger.pid)  # we did not touch the process that owns the pid now


def test_hermes_background_process_is_never_classified_as_tmux(sleeper):
    process = sleeper()
    runtime = process_runtime(process, runtime_class=RuntimeClass.PENDING)
    reconcile()
    assert refreshed(runtime).runtime_class == "process-live"
    process.kill()
    process.wait()
    reconcile()
    assert refreshed(runtime).runtime_class == "process-dead"
    assert not runtime.events.filter(to_class__startswith="tmux").exists()


def test_websocket_rows_are_active_or_idle_never_missing_tmux():
    now = timezone.now()
    fresh = make_runtime(kind="websocket", handle="ws:console-1", last_activity_at=now - timedelta(seconds=10))
    stale = make_runtime(kind="websocket", handle="ws:console-2", last_activity_at=now - timedelta(hours=3))
    reconcile(now=now)
    assert refreshed(fresh).runtime_class == "websocket-active"
    assert refreshed(stale).runtime_class == "websocket-idle"
    assert not Runtime.objects.needs_attention().exists()


def test_mc_4494_waiting_ticket_with_stale_idle_console_raises_no_warning():
    ticket = make_ticket(key="MC-4494", state=Ticket.State.WAITING, kind=Ticket.Kind.INTERACTIVE)
    console = make_runtime(
        ticket=ticket, kind="websocket", handle="ws:console-17", last_activity_at=timezone.now() - timedelta(days=2)
    )
    reconcile()
    console, ticket = refreshed(console), Ticket.objects.get(pk=ticket.pk)
    assert (console.runtime_class, console.tmux_target) == ("websocket-idle", "")
    assert ticket.failure_reason == ""
    assert not Runtime.objects.needs_attention().exists()


def test_umbrella_ticket_without_a_worker_expects_none(tmux_socket):
    umbrella = make_ticket(kind=Ticket.Kind.UMBRELLA)
    runtime = tmux_runtime(tmux_socket, "cr-gone", ticket=umbrella)
    reconcile()
    runtime = refreshed(runtime)
    assert (runtime.runtime_class, runtime.class_reason) == ("no-worker-expected", "ticket-inactive")
    assert Ticket.objects.get(pk=umbrella.pk).failure_reason == ""
    assert not Runtime.objects.needs_attention().exists()


def test_controller_kill_is_never_a_failure(tmux, tmux_socket):
    start_session(tmux, "cr-reaped", "sleep", "60")
    runtime = tmux_runtime(tmux_socket, "cr-reaped", controller_action="kill")
    tmux.cmd("kill-session", "-t", "cr-reaped")
    reconcile()
    runtime = refreshed(runtime)
    assert runtime.runtime_class == "killed-by-controller"
    assert runtime.ticket.failure_reason == ""
    assert not Runtime.objects.needs_attention().exists()


def test_unobservable_tmux_is_unknown_never_missing(settings, tmux_socket):
    settings.CONTROLROOM = {**settings.CONTROLROOM, "TMUX_BIN": "/nonexistent/tmux"}
    runtime = tmux_runtime(tmux_socket, "cr-somewhere")
    reconcile()
    runtime = refreshed(runtime)
    assert (runtime.runtime_class, runtime.class_reason) == ("unknown", "tmux-unreachable")
    assert "tmux binary not found" in runtime.class_message
    assert runtime.ticket.failure_reason == ""


def test_pending_waits_for_its_start_deadline_then_times_out(tmux_socket):
    launched = timezone.now()
    runtime = make_runtime(tmux_socket=tmux_socket, tmux_target="cr-never", started_at=launched)
    reconcile(now=launched + timedelta(seconds=30))
    assert refreshed(runtime).runtime_class == "pending"
    assert not runtime.events.exists()
    reconcile(now=launched + timedelta(seconds=300))
    runtime = refreshed(runtime)
    assert (runtime.runtime_class, runtime.class_reason) == ("tmux-missing", "start-timeout")


def test_one_event_per_transition_and_none_on_an_unchanged_pass(tmux, tmux_socket, sleeper):
    start_session(tmux, "cr-steady", "sleep", "60")
    tmux_runtime(tmux_socket, "cr-steady", runtime_class=RuntimeClass.PENDING)
    process_runtime(sleeper(), runtime_class=RuntimeClass.PENDING)
    first = reconcile()
    assert first.transitions == 2 and LivenessEvent.objects.count() == 2
    second = reconcile()
    assert second.transitions == 0 and LivenessEvent.objects.count() == 2


def test_an_impossible_pid_is_simply_a_dead_process():
    odd = make_runtime(kind="process", pid=2**31 - 1, runtime_class=RuntimeClass.PROCESS_LIVE)
    summary = reconcile()
    assert (refreshed(odd).runtime_class, summary.errors) == ("process-dead", 0)


def test_one_runtime_that_cannot_be_classified_never_stops_the_pass(tmux, tmux_socket, monkeypatch):
    from runtimes import liveness

    start_session(tmux, "cr-good", "sleep", "60")
    good = tmux_runtime(tmux_socket, "cr-good", runtime_class=RuntimeClass.PENDING)
    bad = make_runtime(kind="websocket", handle="ws:broken", last_activity_at=timezone.now())
    real_classify = liveness.classify

    def classify(facts, *args):
        if facts.kind == "websocket":
            raise ValueError("corrupt row")
        return real_classify(facts, *args)

    monkeypatch.setattr(liveness, "classify", classify)
    summary = reconcile()
    assert refreshed(good).runtime_class == "tmux-live"
    assert refreshed(bad).runtime_class == "pending"
    assert summary.errors == 1 and "ws:broken: ValueError: corrupt row" in summary.error_messages[0]
    assert ReconcilerHeartbeat.objects.get(host="test-host").errors == 1


def test_class_and_ledger_agree_for_every_transition(tmux, tmux_socket, sleeper):
    start_session(tmux, "cr-a", "sleep", "60")
    tmux_runtime(tmux_socket, "cr-a", runtime_class=RuntimeClass.PENDING)
    process = sleeper()
    process_runtime(process)
    reconcile()
    process.kill()
    process.wait()
    tmux.cmd("kill-session", "-t", "cr-a")
    reconcile()
    for runtime in Runtime.objects.all():
        latest = runtime.events.order_by("-at", "-pk").first()
        assert latest.to_class == runtime.runtime_class


def test_a_steady_pass_runs_the_same_number_of_queries_at_any_size(tmux, tmux_socket, sleeper):
    def steady_pass_queries():
        reconcile()  # settle
        with CaptureQueriesContext(connection) as queries:
            assert reconcile().transitions == 0
        return len(queries)

    start_session(tmux, "cr-q0", "sleep", "60")
    for i in range(3):
        tmux_runtime(tmux_socket, "cr-q0", handle=f"tmux:q{i}")
        process_runtime(sleeper())
    small = steady_pass_queries()
    for i in range(3, 30):
        tmux_runtime(tmux_socket, "cr-q0", handle=f"tmux:q{i}")
        process_runtime(sleeper())
    assert steady_pass_queries() == small


def test_each_pass_records_the_host_heartbeat():
    make_runtime(kind="websocket", handle="ws:1", last_activity_at=timezone.now())
    summary = reconcile()
    beat = ReconcilerHeartbeat.objects.get(host="test-host")
    assert (beat.runtimes_seen, beat.transitions, beat.counts) == (1, summary.transitions, {"websocket-active": 1})


def test_a_silent_host_turns_its_live_runtimes_unknown_and_they_come_back(tmux, tmux_socket):
    now = timezone.now()
    ReconcilerHeartbeat.objects.create(host="other-host", finished_at=now - timedelta(minutes=30))
    start_session(tmux, "cr-far", "sleep", "60")
    far = tmux_runtime(tmux_socket, "cr-far", host="other-host")
    console = make_runtime(kind="websocket", handle="ws:far", host="other-host", runtime_class="websocket-active")
    summary = reconcile(host="test-host", now=now)
    assert summary.silent_hosts == ["other-host"]
    far = refreshed(far)
    assert (far.runtime_class, far.class_reason) == ("unknown", "host-silent")
    assert refreshed(console).runtime_class == "websocket-active"  # not probed by a host, not its to judge
    reconcile(host="other-host")  # the host reports again, and sees its pane alive
    assert refreshed(far).runtime_class == "tmux-live"


def test_reconcile_command_prints_a_json_summary(tmux, tmux_socket, capsys):
    start_session(tmux, "cr-json", "sleep", "60")
    tmux_runtime(tmux_socket, "cr-json", runtime_class=RuntimeClass.PENDING)
    call_command("reconcile_runtimes", "--json")
    summary = json.loads(capsys.readouterr().out)
    assert summary["transitions"] == 1
    assert summary["counts"] == {"tmux-live": 1}
    assert summary["host"] == "test-host"


def test_reconcile_watch_stops_cleanly_on_sigterm(tmp_path):
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "controlroom.settings_test",
        "DATABASE_URL": f"sqlite:///{tmp_path}/w.db",
    }
    migrate_sqlite(tmp_path / "w.db")
    watcher = subprocess.Popen(
        [sys.executable, "manage.py", "reconcile_runtimes", "--watch", "--interval", "0.2"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        first = watcher.stdout.readline()
        assert "runtimes" in first
        watcher.send_signal(signal.SIGTERM)
        out, _ = watcher.communicate(timeout=10)
    finally:
        if watcher.poll() is None:
            watcher.kill()
    assert watcher.returncode == 0
    assert out.strip().endswith("Stopped.")


def test_last_seen_is_refreshed_only_when_older_than_the_refresh_interval(tmux, tmux_socket, settings):
    settings.CONTROLROOM = {**settings.CONTROLROOM, "LAST_SEEN_REFRESH": 30}
    start_session(tmux, "cr-seen", "sleep", "60")
    now = timezone.now()
    recent = tmux_runtime(tmux_socket, "cr-seen", handle="tmux:recent", last_seen_at=now - timedelta(seconds=5))
    old = tmux_runtime(tmux_socket, "cr-seen", handle="tmux:old", last_seen_at=now - timedelta(seconds=45))
    reconcile(now=now)
    assert refreshed(recent).last_seen_at == now - timedelta(seconds=5)
    assert refreshed(old).last_seen_at == now


def test_last_seen_records_only_what_a_probe_saw_alive(tmux_socket):
    console = make_runtime(kind="websocket", handle="ws:seen", last_activity_at=timezone.now())
    waiting = make_runtime(tmux_socket=tmux_socket, tmux_target="cr-not-yet")  # pending, not seen yet
    reconcile()
    assert refreshed(console).last_seen_at is None
    assert refreshed(waiting).last_seen_at is None


def test_a_session_killed_just_before_a_pass_is_always_missing_never_unknown(tmux_socket):
    # Killing a socket's last session makes its server exit; a pass right after may reach it while
    # it exits. Every trial must read "missing" (CONTROLROOM_KILL_TRIALS=500 for the long run).
    classes = []
    for trial in range(int(os.environ.get("CONTROLROOM_KILL_TRIALS", "25"))):
        socket = f"{tmux_socket}-{trial}"
        server = libtmux.Server(socket_name=socket)
        try:
            start_session(server, "cr-last", "sleep", "60")
            runtime = tmux_runtime(socket, "cr-last")
            server.cmd("kill-session", "-t", "cr-last")
            reconcile()
        finally:
            server.kill()
        classes.append(refreshed(runtime).runtime_class)
    assert set(classes) == {RuntimeClass.TMUX_MISSING}
