import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import libtmux
import pytest
from django.utils import timezone

from runtimes.models import Runtime
from tickets.models import Ticket

FAKES = Path(__file__).parent / "fakes"
_keys = iter(range(1000, 10_000_000))


def make_ticket(**overrides):
    fields = {
        "key": f"MC-{next(_keys)}",
        "title": "A ticket",
        "state": Ticket.State.IN_PROGRESS,
        "kind": Ticket.Kind.TASK,
    }
    fields.update(overrides)
    if fields["state"] in Ticket.CLOSED_STATES:
        fields.setdefault("closed_at", timezone.now())
    return Ticket.objects.create(**fields)


def make_runtime(**overrides):
    kind = overrides.get("kind", Runtime.Kind.TMUX)
    fields = {"kind": kind, "host": "test-host", "handle": f"{kind}:{uuid.uuid4().hex[:10]}"}
    if kind == Runtime.Kind.TMUX:
        fields["tmux_target"] = fields["handle"].split(":", 1)[1]
    if kind == Runtime.Kind.PROCESS:
        fields["pid"] = 999_999
    fields.update(overrides)
    if "ticket" not in fields:
        fields["ticket"] = make_ticket()
    return Runtime.objects.create(**fields)


@pytest.fixture
def tmux_socket():
    """A private tmux server socket name, killed after the test."""
    name = f"crtest-{uuid.uuid4().hex[:10]}"
    yield name
    libtmux.Server(socket_name=name).kill()


@pytest.fixture
def tmux(tmux_socket):
    """A libtmux Server on the private socket, with remain-on-exit on for every window."""
    server = libtmux.Server(socket_name=tmux_socket)
    return server


def start_session(server, name, *argv, remain_on_exit=True, mark=None):
    """Start a detached session running argv (no shell) and return its pane pid. The session
    starts idle, gets remain-on-exit, then respawns into argv, so even an instant exit is kept.
    `mark` sets Control Room's launch mark (a runtime with that launch_token may kill it)."""
    server.cmd("new-session", "-d", "-s", name, "-x", "80", "-y", "24", "sleep", "3600")
    if mark:
        server.cmd("set-option", "-t", f"={name}:", "@controlroom", mark)
    if remain_on_exit:
        server.cmd("set-option", "-t", name, "-w", "remain-on-exit", "on")
    if argv:
        server.cmd("respawn-pane", "-k", "-t", name, "--", *argv)
    pid = server.cmd("display-message", "-p", "-t", name, "#{pane_pid}").stdout[0]
    return int(pid)


def pane_is_dead(server, session, status_reported=True):
    """Dead and (by default) with its exit status or signal reported by tmux.

    tmux 3.3a now and then misses a child's SIGCHLD and never records the status; any later child
    of the server makes its waitpid loop reap the zombie, so the check nudges it with one."""
    out = server.cmd("display-message", "-p", "-t", session, "#{pane_dead}:#{pane_dead_status}#{pane_dead_signal}")
    dead = bool(out.stdout) and out.stdout[0].startswith("1:")
    if dead and status_reported and len(out.stdout[0]) <= 2:
        server.cmd("run-shell", "true")
        return False
    return dead and (len(out.stdout[0]) > 2 or not status_reported)


def wait_for(predicate, timeout=30.0, interval=0.05):
    """Poll until the predicate holds or the deadline passes; returns its last value. The default
    deadline is generous: waiting costs nothing when the condition comes early, and a busy machine
    (two suites side by side on two cores) can be many times slower than an idle one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@pytest.fixture
def sleeper():
    """Start real sleeping processes; every one is killed and reaped after the test."""
    started = []

    def start(seconds=60):
        process = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"])
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()


@pytest.fixture
def fake_bin(tmp_path, settings):
    """Copy the fake claude/codex executables into a temp dir and point the settings at them."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("claude", "codex"):
        target = bin_dir / name
        shutil.copy(FAKES / f"fake_{name}.py", target)
        target.chmod(0o755)
    settings.CONTROLROOM = {
        **settings.CONTROLROOM,
        "CLAUDE_BIN": str(bin_dir / "claude"),
        "CODEX_BIN": str(bin_dir / "codex"),
        "RUN_DIR": tmp_path / "runs",
    }
    return bin_dir


@pytest.fixture(autouse=True)
def _isolated_run_dir(settings, tmp_path_factory):
    # Launched fakes report to a closed local port unless a test points them at its live server.
    settings.CONTROLROOM = {
        **settings.CONTROLROOM,
        "RUN_DIR": tmp_path_factory.mktemp("runs"),
        "URL": "http://127.0.0.1:9",
    }


def postgres_url():
    url = os.environ.get("DATABASE_URL", "")
    return url if url.startswith(("postgres://", "postgresql://")) else None


# The notification tests' local web-hook receiver and sync task path, as fixtures for every module.
from tests.notify_helpers import receiver, sync_tasks  # noqa: E402, F401
