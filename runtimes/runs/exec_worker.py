#!/usr/bin/env python3
"""Run an agent CLI inside its tmux pane: prompt file on stdin, stdout into the output log.

Run as a plain script (no Django): `exec_worker.py --stdin PROMPT --stdout LOG -- CLI ARGS…`.
No shell ever reads the prompt or the paths. The CLI runs as this wrapper's child: signals sent
to the wrapper (SIGTERM, SIGINT, SIGHUP) are passed on, and when the CLI ends its exit status is
written to `LOG.exit` (JSON) before the wrapper ends the same way (same exit code, or killed by
the same signal). The sidecar exists because tmux 3.3a now and then misses a pane's SIGCHLD and
never reports its exit status. With `--notify SOCKET` the wrapper then reports the exit at once
to the host's watcher (`watch_runtimes`) as one unix datagram naming the log, best effort: no
watcher listening changes nothing. Standard error stays on the pane.
"""

import argparse
import json
import os
import signal
import subprocess
import sys

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def exit_file_for(log_path):
    return f"{log_path}.exit"


def read_exit_file(log_path):
    """(exit_code, exit_signal) recorded by the wrapper, or None when there is none (yet)."""
    try:
        with open(exit_file_for(log_path)) as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    code, sig = record.get("exit_code"), record.get("signal")
    valid = (code is None or type(code) is int) and (sig is None or type(sig) is int)
    return (code, sig) if valid and (code is not None or sig is not None) else None


def _write_exit_file(log_path, returncode):
    record = {"exit_code": returncode} if returncode >= 0 else {"signal": -returncode}
    partial = exit_file_for(log_path) + ".tmp"
    with open(partial, "w") as handle:
        json.dump(record, handle)
    os.replace(partial, exit_file_for(log_path))


def notify_exit(socket_path, log_path, returncode):
    """Tell the watcher listening on `socket_path` that the run logging to `log_path` ended.
    Never raises and never blocks: a missing or busy watcher is the schedule's business."""
    import socket  # here, not at the top: the wrapper installs its signal handlers as early as it can

    record = {"output": os.path.abspath(log_path)}
    record.update({"exit_code": returncode} if returncode >= 0 else {"signal": -returncode})
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
            client.setblocking(False)
            client.sendto(json.dumps(record).encode(), socket_path)
    except OSError:
        pass


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stdin", required=True, help="File given to the CLI as standard input.")
    parser.add_argument("--stdout", required=True, help="File the CLI's standard output is appended to.")
    parser.add_argument("--notify", default="", help="The watcher's unix datagram socket to report the exit to.")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the CLI and its arguments.")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given after --")
    # Signals are caught from the start: one that arrives before the CLI exists is passed on as
    # soon as it does, so a stop never skips the exit record.
    started, pending = [], []
    for sig in FORWARDED:
        signal.signal(sig, lambda number, frame: started[0].send_signal(number) if started else pending.append(number))
    try:
        with open(args.stdin, "rb") as prompt, open(args.stdout, "ab") as log:
            os.chmod(args.stdout, 0o600)
            started.append(subprocess.Popen(command, stdin=prompt, stdout=log))
    except OSError as error:
        print(f"exec_worker: cannot start {command[0]}: {error.strerror} ({error.filename})", file=sys.stderr)
        _write_exit_file(args.stdout, 127)
        if args.notify:
            notify_exit(args.notify, args.stdout, 127)
        return 127
    child = started[0]
    for number in pending:
        child.send_signal(number)
    returncode = child.wait()
    _write_exit_file(args.stdout, returncode)
    if args.notify:
        notify_exit(args.notify, args.stdout, returncode)
    if returncode < 0:
        if -returncode not in (signal.SIGKILL, signal.SIGSTOP):  # these cannot have handlers
            signal.signal(-returncode, signal.SIG_DFL)
        os.kill(os.getpid(), -returncode)
    return returncode


if __name__ == "__main__":
    sys.exit(main())
