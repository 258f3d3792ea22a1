"""One tmux control-mode client per socket (`tmux -C attach-session`): the watcher's ear for
sessions and panes it holds no pidfd for (a killed session whose process survives its SIGHUP, a
session that appears after its row). tmux 3.3a sends `%unlinked-window-close` then
`%sessions-changed` when a session is killed (no `%session-closed`), and `%exit` when the session
the client is attached to goes: then the client ends and the watcher starts another.

Control mode was chosen over hooks because it needs nothing installed on the sessions (so it also
hears sessions Control Room did not launch), runs no shell command inside tmux, and measured the
same here (6–13 ms after a kill, against 5–11 ms for a `session-closed` hook).
"""

import contextlib
import os
import subprocess

from runtimes.probes import tmux as tmux_probe

# The notifications that mean "a session or window came or went": look at this socket again.
CHANGES = (b"%sessions-changed", b"%window-close", b"%unlinked-window-close", b"%window-add",
           b"%unlinked-window-add", b"%exit")  # fmt: skip
# Bytes kept of a line that has not ended yet (a control client prints short lines).
MAX_PENDING = 64 * 1024


class ControlClient:
    """A read-only control client attached to one session of one socket, printing no pane output
    and taking no part in window sizes. `fd` becomes readable when tmux says something."""

    def __init__(self, socket, session, tmux_bin):
        argv = [tmux_bin, *tmux_probe.socket_args(socket), "-C", "attach-session", "-r",
                "-f", "no-output,ignore-size", "-t", f"={session}"]  # fmt: skip
        self.socket = socket
        # stdin stays an open pipe: a control client ends when its input ends, so it also ends
        # when the watcher dies, however it dies.
        self.process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True
        )
        self.fd = self.process.stdout.fileno()
        os.set_blocking(self.fd, False)
        self._pending = b""

    def read(self):
        """(changed, ended): whether tmux reported a session or window change, and whether the
        client has ended (end of output)."""
        changed, ended = False, False
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            except OSError:
                ended = True
                break
            if not chunk:
                ended = True
                break
            lines = (self._pending + chunk).split(b"\n")
            self._pending = lines.pop()[-MAX_PENDING:]
            changed = changed or any(line.startswith(CHANGES) for line in lines)
        return changed or ended, ended

    def close(self):
        """End the client and reap it."""
        if self.process.poll() is None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
            self.process.terminate()
            try:
                self.process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        else:
            self.process.stdin.close()
        self.process.stdout.close()
