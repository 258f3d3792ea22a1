"""Gather one observation of a set of runtimes: one tmux call per socket, one identity check per pid."""

import math
import os
from dataclasses import dataclass
from datetime import UTC, datetime

from django.conf import settings

from runtimes import liveness
from runtimes.models import Runtime
from runtimes.probes import processes as process_probe
from runtimes.probes import tmux as tmux_probe
from runtimes.runs.exec_worker import read_exit_file


def policy_from_settings():
    config = settings.CONTROLROOM
    return liveness.Policy(
        start_timeout=config["START_TIMEOUT"],
        websocket_idle_after=config["WEBSOCKET_IDLE_AFTER"],
        unknown_grace=config["UNKNOWN_GRACE"],
        idle_prompt_grace=config["IDLE_PROMPT_GRACE"],
        stall_after=config["STALL_AFTER"],
        usage_limit_grace=config["USAGE_LIMIT_GRACE"],
        usage_limit_pause=config["USAGE_LIMIT_PAUSE"],
    )


def ticket_expects(runtime):
    """Whether the runtime's ticket expects a worker: as annotated or read beside the row
    (`ticket_expects`), else from its ticket (a query when the ticket is not loaded)."""
    if hasattr(runtime, "ticket_expects"):
        return runtime.ticket_expects
    return runtime.ticket.expects_worker


def facts_of(runtime):
    return liveness.RuntimeFacts(
        kind=runtime.kind,
        runtime_class=runtime.runtime_class,
        controller_action=runtime.controller_action,
        ticket_expects_worker=ticket_expects(runtime),
        started_at=runtime.started_at,
        class_changed_at=runtime.class_changed_at,
        last_activity_at=runtime.last_activity_at,
        pid=runtime.pid,
        pid_create_time=runtime.pid_create_time,
        exit_outcome=runtime.exit_outcome,
        class_reason=runtime.class_reason,
        report=(
            liveness.Report(runtime.reported_reason, runtime.reported_at, runtime.resumes_at)
            if runtime.reported_reason and runtime.reported_at
            else None
        ),
        progress_at=runtime.progress_at,
        resumes_at=runtime.resumes_at,
    )


def stored_attention(row, expects_worker, now, policy=None):
    """Whether a stored runtime needs attention now: the classifier's rule (liveness.needs_attention)
    applied to a row's runtime_class, class_reason, class_changed_at, exit_outcome and resumes_at
    (a mapping), no query. Runtime.needs_attention_q is the same rule in SQL; a test holds them equal."""
    changed_at = row["class_changed_at"]
    seconds = (now - changed_at).total_seconds() if changed_at else -math.inf
    return liveness.needs_attention(
        row["runtime_class"], row["exit_outcome"], expects_worker, seconds, policy or policy_from_settings(),
        reason=row["class_reason"], resumes_at=row["resumes_at"], now=now,
    )  # fmt: skip


def attention_of(runtime, now):
    """stored_attention for a loaded Runtime (see ticket_expects)."""
    fields = ("runtime_class", "class_reason", "class_changed_at", "exit_outcome", "resumes_at")
    return stored_attention({name: getattr(runtime, name) for name in fields}, ticket_expects(runtime), now)


@dataclass
class Snapshot:
    """Everything one pass observed, gathered before anything is classified."""

    tmux: dict
    processes: dict

    @classmethod
    def gather(cls, runtimes):
        sockets = {r.tmux_socket for r in runtimes if r.kind == Runtime.Kind.TMUX}
        identities = [(r.pid, r.pid_create_time) for r in runtimes if r.kind == Runtime.Kind.PROCESS and r.pid]
        return cls(
            tmux=tmux_probe.snapshot(sockets),
            processes=process_probe.probe(identities),
        )

    def observe(self, runtime):
        if runtime.kind == Runtime.Kind.TMUX:
            socket = self.tmux[runtime.tmux_socket]
            if socket.error:
                return liveness.Observation(tmux_error=socket.error)
            pane = socket.find(runtime.tmux_target)
            progress = _latest(_epoch(pane.activity if pane else None), output_grew_at(runtime))
            return liveness.Observation(pane=pane, exit_record=exit_record(runtime, pane), progress_at=progress)
        if runtime.kind == Runtime.Kind.PROCESS and runtime.pid:
            return liveness.Observation(
                process=self.processes[(runtime.pid, runtime.pid_create_time)], progress_at=output_grew_at(runtime)
            )
        return liveness.Observation()


def _epoch(seconds):
    return datetime.fromtimestamp(seconds, UTC) if seconds else None


def _latest(*moments):
    present = [m for m in moments if m is not None]
    return max(present) if present else None


def output_grew_at(runtime):
    """When the output log last grew (its mtime), or None without a readable log."""
    if not runtime.output_path:
        return None
    try:
        return _epoch(os.stat(runtime.output_path).st_mtime)
    except OSError:
        return None


def observe_one(runtime):
    """Observe one runtime now (what a command acting on one runtime needs)."""
    return Snapshot.gather([runtime]).observe(runtime)


def exit_record(runtime, pane):
    """How a dead pane's process ended when tmux did not say (tmux 3.3a sometimes misses the
    SIGCHLD): the launch wrapper's record; else, once the pid is certainly dead, what tmux says
    after it is made to reap (its status, or "gone, status unknown"). None while tmux may still
    report it, and for panes that are alive or reported."""
    if pane is None or not pane.dead or pane.dead_status is not None or pane.dead_signal is not None:
        return None
    record = read_exit_file(runtime.output_path) if runtime.output_path else None
    if (
        record is None
        and pane.pid
        and process_probe.probe_one(pane.pid, None).state in (liveness.GONE, liveness.ZOMBIE)
    ):
        record = tmux_probe.reaped_status(runtime.tmux_socket, pane.pane_id) or (None, None)
    return record
