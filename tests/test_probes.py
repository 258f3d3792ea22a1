import os
import signal
import subprocess
import sys

import libtmux
import psutil
import pytest

from runtimes.liveness import ALIVE, GONE, REUSED, ZOMBIE
from runtimes.probes import processes
from runtimes.probes import tmux as tmux_probe
from tests.conftest import start_session, wait_for


def test_list_panes_reads_live_and_dead_panes_in_one_call(tmux, tmux_socket):
    live_pid = start_session(tmux, "live", "sleep", "60")
    start_session(tmux, "exits", "sh", "-c", "exit 3")
    start_session(tmux, "killed", "sh", "-c", "kill -TERM $$")
    assert wait_for(lambda: dead_panes(tmux_socket) == 2)

    snapshot = tmux_probe.list_panes(tmux_socket)
    assert snapshot.error is None
    assert snapshot.find("live").pid == live_pid and not snapshot.find("live").dead
    assert (snapshot.find("exits").dead, snapshot.find("exits").dead_status, snapshot.find("exits").dead_signal) == (
        True,
        3,
        None,
    )
    assert (snapshot.find("killed").dead_status, snapshot.find("killed").dead_signal) == (None, 15)
    assert snapshot.find("live:0.0") == snapshot.find("live")
    assert snapshot.find(snapshot.find("live").pane_id) == snapshot.find("live")
    assert snapshot.find("nope") is None


def dead_panes(socket):
    """Dead panes whose end tmux reports. tmux 3.3a now and then misses a pane's SIGCHLD (dead, no
    status) until another of its children ends: then a `run-shell true` makes it reap, as the
    probe's reaped_status does."""
    panes = {p.pane_id: p for p in tmux_probe.list_panes(socket).by_target.values()}.values()
    if any(pane.dead and pane.dead_status is None and pane.dead_signal is None for pane in panes):
        tmux_probe.run(socket, "run-shell", "true")  # what reaped_status does
    return sum(1 for pane in panes if pane.dead and (pane.dead_status, pane.dead_signal) != (None, None))


def test_no_server_means_no_panes_not_an_error(tmux_socket):
    snapshot = tmux_probe.list_panes(tmux_socket)
    assert snapshot.error is None and snapshot.pane_count == 0


def test_missing_tmux_binary_makes_the_socket_unobservable(tmux_socket):
    snapshot = tmux_probe.list_panes(tmux_socket, tmux_bin="/nonexistent/tmux")
    assert "tmux binary not found" in snapshot.error


def test_a_hanging_tmux_is_bounded_by_the_timeout(tmp_path, tmux_socket):
    hanging = tmp_path / "tmux"
    hanging.write_text("#!/bin/sh\nsleep 30\n")
    hanging.chmod(0o755)
    snapshot = tmux_probe.list_panes(tmux_socket, tmux_bin=str(hanging), timeout=0.5)
    assert "timed out after 0.5s" in snapshot.error


def test_a_socket_we_may_not_open_is_unobservable(tmp_path):
    # A socket path inside a directory we cannot enter: tmux answers with a permission error
    # (root can enter anything, so use a path whose parent is a regular file instead).
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    snapshot = tmux_probe.list_panes(str(not_a_dir / "socket"))
    assert snapshot.error and "Not a directory" in snapshot.error


def test_process_probe_tells_alive_gone_zombie_and_reused(sleeper):
    alive = sleeper()
    created = processes.create_time_of(alive.pid)
    assert processes.probe_one(alive.pid, created).state == ALIVE
    assert processes.probe_one(alive.pid, created - 3600).state == REUSED

    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    assert wait_for(lambda: psutil.Process(zombie.pid).status() == psutil.STATUS_ZOMBIE)
    assert processes.probe_one(zombie.pid, processes.create_time_of(zombie.pid)).state == ZOMBIE
    zombie.wait()

    gone = sleeper()
    gone_created = processes.create_time_of(gone.pid)
    os.kill(gone.pid, signal.SIGKILL)
    gone.wait()
    assert processes.probe_one(gone.pid, gone_created).state == GONE


def fake_tmux(tmp_path, *answers):
    """A tmux stand-in that gives each answer (exit status, stderr) in turn, then the last forever,
    counting its calls in a file beside it."""
    script = tmp_path / "tmux"
    calls = tmp_path / "calls"
    cases = "\n".join(f'  {n}) echo "{err}" >&2; exit {code};;' for n, (code, err) in enumerate(answers[:-1], start=1))
    last_code, last_err = answers[-1]
    script.write_text(
        "#!/bin/sh\n"
        f'echo x >> "{calls}"\n'
        f'n=$(wc -l < "{calls}")\n'
        f'case $n in\n{cases}\n  *) echo "{last_err}" >&2; exit {last_code};;\nesac\n'
    )
    script.chmod(0o755)
    return str(script), calls


@pytest.mark.parametrize("exiting", ["server exited unexpectedly", "no current target"])
def test_a_server_caught_exiting_is_asked_once_more_and_then_has_no_panes(tmp_path, exiting):
    tmux_bin, calls = fake_tmux(tmp_path, (1, exiting), (1, "no server running on /tmp/tmux-0/x"))
    snapshot = tmux_probe.list_panes("x", tmux_bin=tmux_bin)
    assert (snapshot.error, snapshot.pane_count) == (None, 0)
    assert len(calls.read_text().splitlines()) == 2


def test_a_server_still_exiting_on_the_second_ask_has_no_panes_and_is_not_asked_a_third_time(tmp_path):
    tmux_bin, calls = fake_tmux(tmp_path, (1, "server exited unexpectedly"))
    snapshot = tmux_probe.list_panes("x", tmux_bin=tmux_bin)
    assert (snapshot.error, snapshot.pane_count) == (None, 0)
    assert len(calls.read_text().splitlines()) == 2


def test_any_other_tmux_error_is_still_an_error_and_is_not_retried(tmp_path):
    tmux_bin, calls = fake_tmux(tmp_path, (1, "protocol version mismatch"))
    snapshot = tmux_probe.list_panes("x", tmux_bin=tmux_bin)
    assert "protocol version mismatch" in snapshot.error
    assert len(calls.read_text().splitlines()) == 1


def test_listing_panes_right_after_the_last_session_is_killed_never_errors(tmux_socket):
    # The real race: the server is exiting when list-panes reaches it (about 1 in 50 on tmux 3.3a).
    errors = []
    for trial in range(int(os.environ.get("CONTROLROOM_KILL_TRIALS", "40"))):
        socket = f"{tmux_socket}-{trial}"
        try:
            start_session(libtmux.Server(socket_name=socket), "last", "sleep", "60")
            tmux_probe.run(socket, "kill-session", "-t", "last")
            snapshot = tmux_probe.list_panes(socket)
        finally:
            libtmux.Server(socket_name=socket).kill()
        if snapshot.error or snapshot.pane_count:
            errors.append(snapshot.error or "panes left")
    assert errors == []
