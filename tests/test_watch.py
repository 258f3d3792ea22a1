"""The event-driven watcher, run as a real `manage.py watch_runtimes` process against the test
database, with real tmux servers and real processes. No scheduled pass runs in these tests, so a
row the watcher did not write stays as it was."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest
from django.core.management import call_command
from django.db import connection

from runtimes.intake.reports import Registration, register_runtime
from runtimes.models import (
    LivenessEvent,
    ReconcilerHeartbeat,
    Runtime,
    RuntimeClass,
    WatcherHeartbeat,
    WorkerProfile,
)
from runtimes.probes import tmux as tmux_probe
from runtimes.probes.processes import create_time_of
from runtimes.reconcile import reconcile
from runtimes.runs import exec_worker
from tests.conftest import make_runtime, make_ticket, start_session, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent
WATCHER = LivenessEvent.Source.WATCHER


def database_url():
    """The test database, as the watcher process must be told it."""
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{db['USER']}{password}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}"


class WatcherProcess:
    def __init__(self, socket_path, sync="1", **extra_env):
        self.socket_path = socket_path
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "controlroom.settings_test",
            "DATABASE_URL": database_url(),
            "CONTROLROOM_HOST": "test-host",
            "CONTROLROOM_WATCH_SOCKET": socket_path,
            "CONTROLROOM_WATCH_HEARTBEAT": "0.5",
            # The safety-net "changed since" query, every second unless a test says otherwise.
            "CONTROLROOM_WATCH_SYNC": sync,
            "PYTHONUNBUFFERED": "1",
            **extra_env,
        }
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "watch_runtimes"], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
        )
        self.first_line = self.process.stdout.readline()
        assert self.first_line.startswith("Watching test-host"), self.first_line

    def stop(self):
        """SIGTERM, then the rest of its output."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            out, _ = self.process.communicate(timeout=10)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        return out


@pytest.fixture
def watcher():
    """Start watchers (each waits until its start-up pass is done); all are stopped at teardown."""
    directory = tempfile.mkdtemp(prefix="crw-")  # short: a unix socket path has at most 107 bytes
    started = []

    def start(**options):
        started.append(WatcherProcess(os.path.join(directory, "watch.sock"), **options))
        return started[-1]

    yield start
    for process in started:
        process.stop()
    shutil.rmtree(directory, ignore_errors=True)


def tmux_runtime(socket_name, session, **fields):
    fields.setdefault("runtime_class", RuntimeClass.TMUX_LIVE)
    return make_runtime(tmux_socket=socket_name, tmux_target=session, **fields)


def process_runtime(pid, create_time, **fields):
    fields.setdefault("runtime_class", RuntimeClass.PROCESS_LIVE)
    fields.setdefault("handle", f"hermes-bg:proc_{os.urandom(6).hex()}")
    return make_runtime(kind="process", pid=pid, pid_create_time=create_time, **fields)


def class_of(runtime):
    return Runtime.objects.values_list("runtime_class", flat=True).get(pk=runtime.pk)


def becomes(runtime, runtime_class, timeout=10):
    return wait_for(lambda: class_of(runtime) == runtime_class, timeout=timeout)


def watched(count):
    """The watcher's heartbeat says it holds `count` pidfds."""
    return lambda: WatcherHeartbeat.objects.filter(host="test-host", pidfds=count).exists()


def test_a_killed_pane_process_is_recorded_exited_by_the_watcher(tmux, tmux_socket, watcher):
    pid = start_session(tmux, "w-kill", "sleep", "600")
    runtime = tmux_runtime(tmux_socket, "w-kill")
    watcher()
    assert wait_for(watched(1))
    os.kill(pid, signal.SIGKILL)
    assert becomes(runtime, RuntimeClass.EXITED)
    runtime.refresh_from_db()
    assert (runtime.exit_signal, runtime.exit_code) == (9, None)
    event = runtime.events.get()
    assert (event.from_class, event.to_class, event.source) == ("tmux-live", "exited", WATCHER)


def test_a_killed_session_whose_process_survives_is_heard_through_tmux(tmux, tmux_socket, watcher):
    # The pane's process ignores the SIGHUP of kill-session, so no pidfd fires: only tmux says so.
    survivor = "import signal, time; signal.signal(signal.SIGHUP, signal.SIG_IGN); time.sleep(600)"
    pid = start_session(tmux, "w-session", sys.executable, "-c", survivor)
    runtime = tmux_runtime(tmux_socket, "w-session")
    watcher()
    try:
        assert wait_for(watched(1))
        tmux.cmd("kill-session", "-t", "w-session")
        assert becomes(runtime, RuntimeClass.TMUX_MISSING)
        assert psutil.pid_exists(pid)
        assert runtime.events.get().reason == "session-missing"
        assert runtime.events.get().source == WATCHER
    finally:
        os.kill(pid, signal.SIGKILL)


def test_a_pane_exiting_3_with_remain_on_exit_is_exited_with_status_3(tmux, tmux_socket, watcher):
    start_session(tmux, "w-three", "sh", "-c", "read line; exit 3")
    runtime = tmux_runtime(tmux_socket, "w-three")
    watcher()
    assert wait_for(watched(1))
    tmux.cmd("send-keys", "-t", "w-three", "go", "Enter")
    assert becomes(runtime, RuntimeClass.EXITED)
    runtime.refresh_from_db()
    assert (runtime.exit_code, runtime.exit_signal) == (3, None)
    assert runtime.events.get().source == WATCHER


def test_a_killed_background_process_is_process_dead(sleeper, watcher):
    process = sleeper()
    runtime = process_runtime(process.pid, create_time_of(process.pid))
    watcher()
    assert wait_for(watched(1))
    process.kill()
    process.wait()
    assert becomes(runtime, RuntimeClass.PROCESS_DEAD)
    event = runtime.events.get()
    assert (event.source, event.reason) == (WATCHER, "process-exited")


def test_a_background_process_turned_zombie_is_process_dead_as_a_zombie(sleeper, watcher):
    process = sleeper()
    runtime = process_runtime(process.pid, create_time_of(process.pid))
    watcher()
    assert wait_for(watched(1))
    process.kill()  # not reaped: it stays a zombie until the fixture waits for it
    assert becomes(runtime, RuntimeClass.PROCESS_DEAD)
    assert psutil.Process(process.pid).status() == psutil.STATUS_ZOMBIE
    event = runtime.events.get()
    assert (event.source, event.reason) == (WATCHER, "process-zombie")


def test_a_pid_reused_by_another_process_is_not_trusted_and_is_recorded_reused(sleeper, watcher):
    watcher()
    other = sleeper()
    # Registered after the watcher started: our process (started 100 s earlier) is gone and its pid
    # now belongs to `other`. The watcher must hold no pidfd on `other` and say so at once.
    runtime = process_runtime(other.pid, create_time_of(other.pid) - 100)
    assert becomes(runtime, RuntimeClass.PROCESS_DEAD)
    event = runtime.events.get()
    assert (event.source, event.reason) == (WATCHER, "pid-reused")
    assert other.poll() is None


def test_a_runtime_registered_after_the_watcher_started_is_picked_up_and_watched(tmux, tmux_socket, watcher):
    watcher()
    pid = start_session(tmux, "w-late", "sleep", "600")
    runtime = tmux_runtime(tmux_socket, "w-late", runtime_class=RuntimeClass.PENDING)
    assert becomes(runtime, RuntimeClass.TMUX_LIVE)
    assert wait_for(watched(1))
    os.kill(pid, signal.SIGTERM)
    assert becomes(runtime, RuntimeClass.EXITED)
    assert list(runtime.events.order_by("pk").values_list("to_class", "source")) == [
        ("tmux-live", WATCHER),
        ("exited", WATCHER),
    ]


def test_a_runtime_registered_on_this_host_is_watched_at_once_with_no_periodic_sync(sleeper, watcher, settings):
    # The safety-net query runs only at start-up here: the registration's announcement alone brings
    # the runtime in.
    process = watcher(sync="3600")
    settings.CONTROLROOM = {**settings.CONTROLROOM, "WATCH_SOCKET": process.socket_path}
    worker = sleeper()
    registration = Registration(
        ticket=make_ticket().key,
        handle="hermes-bg:proc_announced",
        kind="process",
        host="test-host",
        pid=worker.pid,
        pid_create_time=create_time_of(worker.pid),
    )
    runtime = register_runtime(registration).runtime
    assert becomes(runtime, RuntimeClass.PROCESS_LIVE)
    assert wait_for(watched(1))
    worker.kill()
    worker.wait()
    assert becomes(runtime, RuntimeClass.PROCESS_DEAD)
    assert list(runtime.events.order_by("pk").values_list("to_class", "source")) == [
        ("pending", LivenessEvent.Source.API),
        ("process-live", WATCHER),
        ("process-dead", WATCHER),
    ]


def test_a_worker_launched_on_this_host_is_watched_at_once_with_no_periodic_sync(
    fake_bin, tmp_path, tmux, tmux_socket, watcher, settings
):
    process = watcher(sync="3600")
    settings.CONTROLROOM = {**settings.CONTROLROOM, "WATCH_SOCKET": process.socket_path}
    ticket = make_ticket()
    WorkerProfile.objects.create(name="codex_default", provider="codex", model="gpt-5.5")
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Do the work.")
    call_command("launch_worker", ticket.key, "--profile", "codex_default", "--cwd", str(tmp_path),
                 "--prompt-file", str(prompt), "--tmux-socket", tmux_socket)  # fmt: skip
    runtime = Runtime.objects.get(ticket=ticket)
    # No scheduled pass runs here: only a watcher that picked the launch up writes these rows.
    assert wait_for(lambda: runtime.events.filter(source=WATCHER).exists())


def test_malformed_datagrams_are_ignored_and_an_announcement_still_works_after_them(sleeper, watcher):
    process = watcher(sync="3600")
    worker = sleeper()
    runtime = process_runtime(worker.pid, create_time_of(worker.pid), runtime_class=RuntimeClass.PENDING)
    elsewhere = process_runtime(worker.pid, create_time_of(worker.pid), host="other-host")
    junk = [b"", b"\xff\xfe", b"[" * 4000, b"null", b"[1, 2]", b'{"runtime": "7"}', b'{"runtime": true}',
            b'{"runtime": -1}', b'{"runtime": 1e400}', b'{"runtime": ' + b"9" * 100 + b"}", b'{"output": 5}',
            b"x" * 60_000, json.dumps({"runtime": elsewhere.pk}).encode()]  # fmt: skip
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        for data in [*junk, json.dumps({"runtime": runtime.pk}).encode()]:
            client.sendto(data, process.socket_path)
    assert becomes(runtime, RuntimeClass.PROCESS_LIVE)
    assert process.process.poll() is None
    assert not elsewhere.events.exists()  # announced before, read in order: another host's is not ours


def test_a_restarted_watcher_records_at_start_up_what_died_while_it_was_down(tmux, tmux_socket, sleeper, watcher):
    pid = start_session(tmux, "w-restart", "sleep", "600")
    pane = tmux_runtime(tmux_socket, "w-restart")
    process = sleeper()
    background = process_runtime(process.pid, create_time_of(process.pid))
    first = watcher()
    assert wait_for(watched(2))
    out = first.stop()
    assert first.process.returncode == 0
    assert out.strip().endswith("Stopped.")
    assert WatcherHeartbeat.objects.get(host="test-host").stopped_at is not None
    os.kill(pid, signal.SIGKILL)
    process.kill()
    process.wait()
    second = watcher()  # its first line comes after the start-up pass
    assert second.first_line.strip().endswith("the start-up pass recorded 2 transitions.")
    assert (class_of(pane), class_of(background)) == (RuntimeClass.EXITED, RuntimeClass.PROCESS_DEAD)
    assert WatcherHeartbeat.objects.get(host="test-host").stopped_at is None


def test_the_watcher_and_the_scheduled_pass_write_one_ledger_row_per_death(sleeper, watcher):
    processes = [sleeper() for _ in range(20)]
    runtimes = [process_runtime(p.pid, create_time_of(p.pid)) for p in processes]
    watcher()
    assert wait_for(watched(20))
    for process in processes:
        process.kill()
        process.wait()

    def all_dead_after_a_scheduled_pass():
        reconcile(host="test-host")
        return all(class_of(r) == RuntimeClass.PROCESS_DEAD for r in runtimes)

    assert wait_for(all_dead_after_a_scheduled_pass)
    reconcile(host="test-host")
    for runtime in runtimes:
        assert list(runtime.events.values_list("to_class", flat=True)) == ["process-dead"]
    assert LivenessEvent.objects.count() == 20


def test_a_burst_of_deaths_is_recorded_in_few_passes(sleeper, watcher):
    processes = [sleeper() for _ in range(30)]
    runtimes = [process_runtime(p.pid, create_time_of(p.pid)) for p in processes]
    watcher()
    assert wait_for(watched(30))
    before = WatcherHeartbeat.objects.get(host="test-host").passes
    for process in processes:
        process.kill()
    for process in processes:
        process.wait()
    assert wait_for(lambda: all(class_of(r) == RuntimeClass.PROCESS_DEAD for r in runtimes))
    assert wait_for(lambda: WatcherHeartbeat.objects.get(host="test-host").transitions == 30)
    # 30 deaths within a millisecond or two: gathered into a handful of passes, not 30.
    assert WatcherHeartbeat.objects.get(host="test-host").passes - before < 10


def test_the_watcher_beats_its_own_heartbeat_and_leaves_the_reconcile_one_alone(sleeper, watcher):
    process = sleeper()
    process_runtime(process.pid, create_time_of(process.pid), runtime_class=RuntimeClass.PENDING)
    watcher()
    beat = WatcherHeartbeat.objects.get(host="test-host")
    assert (beat.watched, beat.pidfds, beat.stopped_at) == (1, 1, None)
    assert beat.state() == WatcherHeartbeat.State.WATCHING
    assert not ReconcilerHeartbeat.objects.exists()


def test_exec_worker_reports_its_childs_exit_to_the_watcher_socket(tmp_path):
    path = tempfile.mktemp(prefix="crw-", suffix=".sock")  # noqa: S306 - a socket name, bound at once
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    try:
        prompt, log = tmp_path / "prompt.txt", tmp_path / "out.jsonl"
        prompt.write_text("hi")
        code = exec_worker.main(["--stdin", str(prompt), "--stdout", str(log), "--notify", path, "--",
                                 sys.executable, "-c", "raise SystemExit(4)"])  # fmt: skip
        server.settimeout(5)
        report = json.loads(server.recv(4096))
    finally:
        server.close()
        os.unlink(path)
    assert code == 4
    assert report == {"output": str(log), "exit_code": 4}


def test_exec_worker_with_no_watcher_listening_ends_as_before(tmp_path):
    prompt, log = tmp_path / "prompt.txt", tmp_path / "out.jsonl"
    prompt.write_text("hi")
    missing = str(tmp_path / "nobody.sock")
    code = exec_worker.main(["--stdin", str(prompt), "--stdout", str(log), "--notify", missing, "--", "true"])
    assert code == 0
    assert exec_worker.read_exit_file(str(log)) == (0, None)


def test_a_targeted_pass_looks_only_at_the_runtimes_named_and_leaves_the_reconcile_heartbeat(sleeper):
    gone = sleeper()
    identity = (gone.pid, create_time_of(gone.pid))
    gone.kill()
    gone.wait()
    named, other = process_runtime(*identity), process_runtime(*identity, handle="hermes-bg:proc_000000000000")
    summary = reconcile(host="test-host", only=[named.pk], source=WATCHER)
    assert summary.classes == {named.pk: RuntimeClass.PROCESS_DEAD}
    assert (class_of(named), class_of(other)) == (RuntimeClass.PROCESS_DEAD, RuntimeClass.PROCESS_LIVE)
    assert named.events.get().source == WATCHER
    assert "classes" not in summary.as_dict()
    assert not ReconcilerHeartbeat.objects.exists()


def test_reaped_status_reads_a_dead_panes_exit_status_and_says_nothing_of_a_live_pane(tmux, tmux_socket):
    start_session(tmux, "w-dead", "sh", "-c", "exit 3")
    start_session(tmux, "w-alive", "sleep", "600")
    assert wait_for(lambda: tmux_probe.reaped_status(tmux_socket, "w-dead") == (3, None))
    assert tmux_probe.reaped_status(tmux_socket, "w-alive") is None
    assert tmux_probe.reaped_status(tmux_socket, "no-such-session") is None


def test_reaped_status_reads_a_killed_panes_signal_not_an_exit_status(tmux, tmux_socket):
    # tmux prints "\t9" (no status, signal 9): the signal must not slide into the status column.
    pid = start_session(tmux, "w-killed", "sleep", "600")
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: tmux_probe.reaped_status(tmux_socket, "w-killed") is not None)
    assert tmux_probe.reaped_status(tmux_socket, "w-killed") == (None, 9)
