"""The only code that talks to tmux: one bounded `list-panes -a` per socket, and the few commands
dispatch and the controller need. Every call is an argv list with a timeout.

libtmux's `tmux_cmd` waits on tmux with no time limit, so a hung server would hang the whole
reconciler; these calls build the same `tmux -L NAME …` argv and run it under a timeout.
"""

import os
import stat
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_for_all
from dataclasses import dataclass, field

from django.conf import settings

from runtimes.liveness import PaneFacts

FIELDS = (
    "#{session_name}",
    "#{window_index}",
    "#{pane_index}",
    "#{pane_id}",
    "#{pane_pid}",
    "#{pane_dead}",
    "#{pane_dead_status}",
    "#{pane_dead_signal}",
    "#{window_activity}",
    "#{pane_current_command}",
)
PANE_FORMAT = "\t".join(FIELDS)

# tmux's words for "no server on this socket" (client.c): that is no panes, not an error.
_NO_SERVER = ("no server running on", "error connecting to")
# What a client says when the server exits under it: right after a socket's last session is
# killed, a `list-panes -a` may reach the dying server (about 1 in 50 calls on tmux 3.3a).
_SERVER_EXITING = ("server exited unexpectedly", "no current target")


class TmuxError(Exception):
    """tmux could not be asked (binary missing, permission, timeout, or a tmux error)."""


def socket_args(socket):
    """`-S path` for a socket path, `-L name` for a socket name, nothing for the default server."""
    if not socket:
        return []
    return ["-S", socket] if "/" in socket else ["-L", socket]


def socket_path(socket):
    """The file a socket name or path stands for (tmux's own rule for -L: $TMUX_TMPDIR or /tmp,
    then tmux-UID/NAME); None for the default server."""
    if not socket:
        return None
    if "/" in socket:
        return socket
    return os.path.join(os.environ.get("TMUX_TMPDIR") or "/tmp", f"tmux-{os.getuid()}", socket)  # noqa: S108


def check_socket_file(socket):
    """Refuse a socket that names an existing file which is not a socket: tmux would delete that
    file and bind its server there. Raises TmuxError."""
    path = socket_path(socket)
    try:
        mode = os.lstat(path).st_mode if path else None
    except OSError:
        return
    if mode is not None and not stat.S_ISSOCK(mode):
        raise TmuxError(f"tmux socket {path} exists and is not a socket; refusing to let tmux replace it")


def run(socket, *args, tmux_bin=None, timeout=None):
    """Run one tmux command on `socket`; return the CompletedProcess, or raise TmuxError.
    The binary and the time limit default to CONTROLROOM_TMUX_BIN and CONTROLROOM_TMUX_TIMEOUT.
    A socket path that exists and is not a socket is refused before tmux runs."""
    tmux_bin = tmux_bin or settings.CONTROLROOM["TMUX_BIN"]
    timeout = timeout or settings.CONTROLROOM["TMUX_TIMEOUT"]
    check_socket_file(socket)
    argv = [tmux_bin, *socket_args(socket), *args]
    try:
        return subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=timeout, check=False)
    except FileNotFoundError:
        raise TmuxError(f"tmux binary not found: {tmux_bin}") from None
    except PermissionError as error:
        raise TmuxError(f"tmux binary not executable: {tmux_bin} ({error.strerror})") from None
    except subprocess.TimeoutExpired:
        raise TmuxError(
            f"tmux {args[0] if args else ''} timed out after {timeout:g}s on {socket or 'default'}"
        ) from None
    except OSError as error:
        raise TmuxError(f"tmux could not run: {error}") from None


def kill_session(socket, session, **options):
    """Kill one session; a session or server that is already gone counts as done."""
    done = run(socket, "kill-session", "-t", f"={session}", **options)
    if done.returncode != 0 and not (is_no_server(done.stderr) or "can't find session" in done.stderr):
        raise TmuxError(f"tmux kill-session {session} failed: {done.stderr.strip()}")


# The tmux user option that marks a session as started by Control Room; its value is the
# runtime's launch token, so a stop kills only the session its own launch created.
MARK_OPTION = "@controlroom"


def session_mark(socket, session, **options):
    """The session's Control Room mark: None when the session (or its server) does not exist,
    "" when it exists without a mark, else the launch token it carries."""
    done = run(socket, "show-options", "-t", f"={session}:", "-v", MARK_OPTION, **options)
    if done.returncode == 0:
        return done.stdout.strip()
    stderr = done.stderr.strip()
    if is_no_server(stderr) or stderr.startswith(("no such session", "can't find session")):
        return None
    if stderr.startswith("invalid option"):
        return ""
    raise TmuxError(f"tmux show-options {session} failed: {stderr or f'exit status {done.returncode}'}")


def reaped_status(socket, pane_id, **options):
    """(exit_status, exit_signal) of a dead pane whose status tmux has not reported, after making
    tmux reap it; None when tmux still does not say. tmux 3.3a now and then misses a pane's
    SIGCHLD and leaves the process a zombie until another child of the server ends: `run-shell
    true` is such a child, and its SIGCHLD makes tmux's waitpid loop reap every zombie. Also
    answers the race where the pane was listed a moment before tmux reaped it."""
    fields = "#{pane_dead_status}\t#{pane_dead_signal}"
    try:
        done = run(socket, "run-shell", "true", ";", "display-message", "-p", "-t", pane_id, fields, **options)
    except TmuxError:
        return None
    if done.returncode != 0:
        return None
    status, _, signal = done.stdout.rstrip("\n").partition("\t")  # not strip(): "\t9" is signal 9
    status, signal = _int_or_none(status), _int_or_none(signal)
    return None if status is None and signal is None else (status, signal)


def is_no_server(stderr):
    text = stderr.strip()
    if text.startswith(_NO_SERVER[0]):
        return True
    return text.startswith(_NO_SERVER[1]) and "No such file or directory" in text


def is_server_exiting(stderr):
    return stderr.strip() in _SERVER_EXITING


def _int_or_none(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def parse_panes(lines):
    panes = []
    for line in lines:
        parts = line.split("\t", len(FIELDS) - 1)
        if len(parts) != len(FIELDS):
            continue
        session, window, pane, pane_id, pid, dead, status, signal, activity, command = parts
        is_dead = dead == "1"
        panes.append(
            PaneFacts(
                session=session,
                window_index=window,
                pane_index=pane,
                pane_id=pane_id,
                pid=_int_or_none(pid),
                dead=is_dead,
                dead_status=_int_or_none(status) if is_dead else None,
                dead_signal=_int_or_none(signal) if is_dead else None,
                activity=_int_or_none(activity),
                current_command=command,
            )
        )
    return panes


@dataclass
class SocketSnapshot:
    """All panes of one tmux server, or the error that kept us from seeing them."""

    socket: str
    error: str | None = None
    by_target: dict = field(default_factory=dict)

    @classmethod
    def of(cls, socket, panes):
        snapshot = cls(socket)
        for pane in panes:
            key = f"{pane.session}:{pane.window_index}.{pane.pane_index}"
            snapshot.by_target[key] = pane
            snapshot.by_target[pane.pane_id] = pane
            # A bare session name means the session's first pane.
            snapshot.by_target.setdefault(pane.session, pane)
        return snapshot

    def find(self, target):
        return self.by_target.get(target)

    @property
    def pane_count(self):
        return len({pane.pane_id for pane in self.by_target.values()})


def list_panes(socket, tmux_bin=None, timeout=None):
    """One `list-panes -a` on one socket. Never raises: errors land in the snapshot.

    A server caught exiting (its last session just went) is asked once more within the same time
    bound; if it is still exiting or gone by then, it has no panes."""
    timeout = timeout or settings.CONTROLROOM["TMUX_TIMEOUT"]
    deadline = time.monotonic() + timeout
    try:
        done = run(socket, "list-panes", "-a", "-F", PANE_FORMAT, tmux_bin=tmux_bin, timeout=timeout)
        if done.returncode != 0 and is_server_exiting(done.stderr):
            left = deadline - time.monotonic()
            if left <= 0:
                return SocketSnapshot(socket)
            done = run(socket, "list-panes", "-a", "-F", PANE_FORMAT, tmux_bin=tmux_bin, timeout=left)
    except TmuxError as error:
        return SocketSnapshot(socket, error=str(error))
    if done.returncode != 0:
        if is_no_server(done.stderr) or is_server_exiting(done.stderr):
            return SocketSnapshot(socket)
        detail = done.stderr.strip() or f"exit status {done.returncode}"
        return SocketSnapshot(socket, error=f"tmux list-panes failed on {socket or 'default'}: {detail[:500]}")
    return SocketSnapshot.of(socket, parse_panes(done.stdout.splitlines()))


# Sockets probed at once; more than this many share the one overall time bound.
MAX_PARALLEL_SOCKETS = 16


def snapshot(sockets, tmux_bin=None, timeout=None):
    """Every pane on every socket named: one tmux call per distinct socket, all sockets probed
    concurrently under one overall bound (the tmux timeout), so hung servers cost one timeout per
    pass, not one each. A socket not answered by the deadline is an error in its snapshot."""
    sockets = sorted(set(sockets))
    if len(sockets) <= 1:
        return {socket: list_panes(socket, tmux_bin, timeout) for socket in sockets}
    timeout = timeout or settings.CONTROLROOM["TMUX_TIMEOUT"]
    deadline = time.monotonic() + timeout

    def probe(socket):
        left = deadline - time.monotonic()
        if left <= 0:
            return SocketSnapshot(
                socket, error=f"tmux list-panes timed out after {timeout:g}s on {socket or 'default'}"
            )
        probed = list_panes(socket, tmux_bin, left)
        if probed.error and "timed out" in probed.error:  # name the bound, not the time left of it
            probed.error = f"tmux list-panes timed out after {timeout:g}s on {socket or 'default'}"
        return probed

    pool = ThreadPoolExecutor(max_workers=min(len(sockets), MAX_PARALLEL_SOCKETS), thread_name_prefix="tmux-probe")
    try:
        futures = {socket: pool.submit(probe, socket) for socket in sockets}
        wait_for_all(futures.values(), timeout=timeout + 1)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    late = f"tmux list-panes timed out after {timeout:g}s"
    return {
        socket: future.result() if future.done() and not future.cancelled() else SocketSnapshot(socket, error=late)
        for socket, future in futures.items()
    }


def capture_pane(socket, target, lines=40, timeout=None, tmux_bin=None):
    """The last `lines` non-blank lines of a pane's history and screen (`capture-pane -p -J`), as
    text. Works on a dead pane kept by remain-on-exit. Raises TmuxError when tmux cannot answer."""
    lines = max(1, int(lines))
    done = run(socket, "capture-pane", "-p", "-J", "-t", target, "-S", f"-{lines}", tmux_bin=tmux_bin, timeout=timeout)
    if done.returncode != 0:
        detail = done.stderr.strip() or f"exit status {done.returncode}"
        raise TmuxError(f"tmux capture-pane {target} failed: {detail[:300]}")
    # -S -N is N lines of history on top of the whole visible screen (blank rows included):
    # keep the last N rows with something on them.
    written = [row for row in done.stdout.split("\n") if row.strip()]
    return "\n".join(written[-lines:])
