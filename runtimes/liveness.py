"""Classify one runtime from its stored facts and one observation. Pure: no Django, no I/O, no clock.

The class values and the attention rules are the design brief's table; the function is the only
place that decides them. The reconciler gathers the inputs and writes the result.
"""

import math
from dataclasses import dataclass, replace
from datetime import datetime

# The class and reason names, repeated as plain strings so this module needs no Django. They are
# the values of runtimes.models.RuntimeClass / Reason; tests check the two stay in step.
PENDING = "pending"
TMUX_LIVE = "tmux-live"
TMUX_MISSING = "tmux-missing"
PROCESS_LIVE = "process-live"
PROCESS_DEAD = "process-dead"
WEBSOCKET_ACTIVE = "websocket-active"
WEBSOCKET_IDLE = "websocket-idle"
EXITED = "exited"
KILLED_BY_CONTROLLER = "killed-by-controller"
COMPLETED_BY_CONTROLLER = "completed-by-controller"
NO_WORKER_EXPECTED = "no-worker-expected"
UNKNOWN = "unknown"
WAITING_INPUT = "waiting-input"
USAGE_LIMITED = "usage-limited"
STALLED = "stalled"
RESUMED = "resumed"

FINAL = (EXITED, KILLED_BY_CONTROLLER, COMPLETED_BY_CONTROLLER, RESUMED)
# Classes in which the worker is (as far as anyone knows) still alive.
LIVE = (PENDING, TMUX_LIVE, PROCESS_LIVE, WEBSOCKET_ACTIVE, WEBSOCKET_IDLE, WAITING_INPUT, USAGE_LIMITED, STALLED)
# The live class each kind returns to when it shows a sign of work again.
LIVE_CLASS_OF_KIND = {"tmux": TMUX_LIVE, "process": PROCESS_LIVE, "websocket": WEBSOCKET_ACTIVE}

# What a worker reports about itself (the reasons of runtimes.models.Reason they map to).
PERMISSION_PROMPT = "permission-prompt"
ELICITATION = "elicitation-dialog"
IDLE_PROMPT = "idle-prompt"
USAGE_LIMIT = "usage-limit"
NO_PROGRESS = "no-progress"
WORKING = "working"
WAITING_REASONS = (PERMISSION_PROMPT, ELICITATION, IDLE_PROMPT)
# A person must answer these at once; an idle prompt only after Policy.idle_prompt_grace.
ANSWER_NOW_REASONS = (PERMISSION_PROMPT, ELICITATION)

# Controller actions (runtimes.models.Runtime.ControllerAction).
ACTION_NONE = "none"
STOP_REQUESTED = "stop-requested"
STOPPING = "stopping"
KILL = "kill"
COMPLETE = "complete"
CONTROLLER_ACTIONS = (ACTION_NONE, STOP_REQUESTED, STOPPING, KILL, COMPLETE)

# Process probe states (probes.processes sets them).
ALIVE = "alive"
GONE = "gone"
ZOMBIE = "zombie"
REUSED = "reused"
DENIED = "denied"
UNVERIFIABLE = "unverifiable"  # the recorded create time is not a finite number: identity unknowable

# Reasons for `unknown` decided here.
NOT_OBSERVED = "not-observed"
CLOCK_SKEW = "clock-skew"


@dataclass(frozen=True)
class Policy:
    start_timeout: float = 120.0  # seconds a launched worker may take to be seen alive
    websocket_idle_after: float = 300.0  # seconds without activity before a console is idle
    unknown_grace: float = 300.0  # seconds a runtime may stay unknown before someone is told
    idle_prompt_grace: float = 600.0  # seconds an interactive session may wait for its next prompt
    stall_after: float = 900.0  # seconds alive without any sign of progress before it is stalled
    usage_limit_grace: float = 600.0  # seconds past resumes_at a usage-limited run may stay limited
    usage_limit_pause: float = 3600.0  # assumed pause when a usage limit gives no reset time
    report_settle: float = 5.0  # a sign of work counts against a report only this much after it
    clock_skew_tolerance: float = 60.0  # seconds a recorded time may lie ahead of now (hosts' clocks differ)


@dataclass(frozen=True)
class Report:
    """The latest thing a worker said about itself (a hook, a notify, a launcher's report)."""

    reason: str  # WORKING, or one of WAITING_REASONS / USAGE_LIMIT
    at: datetime
    resumes_at: datetime | None = None


@dataclass(frozen=True)
class RuntimeFacts:
    kind: str  # "tmux" | "process" | "websocket"
    runtime_class: str
    controller_action: str  # "none" | "stop-requested" | "stopping" | "kill" | "complete"
    ticket_expects_worker: bool
    started_at: datetime
    class_changed_at: datetime | None = None
    last_activity_at: datetime | None = None
    pid: int | None = None
    pid_create_time: float | None = None
    exit_outcome: str = ""
    class_reason: str = ""
    report: Report | None = None  # the last self-report stored on the runtime
    progress_at: datetime | None = None  # the last sign of work recorded on the runtime
    resumes_at: datetime | None = None


@dataclass(frozen=True)
class PaneFacts:
    session: str
    window_index: str
    pane_index: str
    pane_id: str
    pid: int | None
    dead: bool
    dead_status: int | None
    dead_signal: int | None
    activity: int | None
    current_command: str

    def as_dict(self):
        return {
            "pane_id": self.pane_id,
            "pane_pid": self.pid,
            "pane_dead": self.dead,
            "pane_dead_status": self.dead_status,
            "pane_dead_signal": self.dead_signal,
            "window_activity": self.activity,
            "current_command": self.current_command,
        }


@dataclass(frozen=True)
class ProcessFacts:
    pid: int
    state: str  # ALIVE | GONE | ZOMBIE | REUSED | DENIED
    create_time: float | None = None
    detail: str = ""

    def as_dict(self):
        return {"pid": self.pid, "state": self.state, "create_time": self.create_time, "detail": self.detail}


@dataclass(frozen=True)
class Observation:
    """What one pass saw of one runtime. For tmux rows, `tmux_error` set means the socket could not
    be observed; `pane` None with no error means the session or pane does not exist."""

    pane: PaneFacts | None = None
    tmux_error: str | None = None
    process: ProcessFacts | None = None
    host_silent: str | None = None  # a message when the runtime's host reconciler has gone quiet
    # For a dead pane tmux gave no status for: (exit_code, exit_signal) from the launch wrapper's
    # record, or (None, None) when the pane's process is certainly gone but its status is lost.
    exit_record: tuple | None = None
    # Signs of work seen now: the pane's last activity, the output log's last growth (epoch-aware
    # datetimes), and a worker's own report. `probed` False means only the report is new: the
    # worker's liveness is what its class already says (an API report probes nothing).
    progress_at: datetime | None = None
    report: Report | None = None
    probed: bool = True

    def as_dict(self):
        facts = {}
        if self.pane:
            facts["pane"] = self.pane.as_dict()
        if self.tmux_error:
            facts["tmux_error"] = self.tmux_error
        if self.process:
            facts["process"] = self.process.as_dict()
        if self.host_silent:
            facts["host_silent"] = self.host_silent
        if self.exit_record:
            facts["exit_record"] = list(self.exit_record)
        if self.progress_at:
            facts["progress_at"] = self.progress_at.isoformat()
        return facts


@dataclass(frozen=True)
class Classification:
    runtime_class: str
    reason: str
    message: str = ""
    needs_attention: bool = False
    exit_code: int | None = None
    exit_signal: int | None = None

    @property
    def ended(self):
        return self.runtime_class in (*FINAL, TMUX_MISSING, PROCESS_DEAD)


def needs_attention(
    runtime_class, exit_outcome, ticket_expects_worker, seconds_in_class, policy, reason="", resumes_at=None, now=None
):
    """Whether a person must act: only where a worker is expected, and only for missing, dead or
    stalled workers, a question a person must answer (an idle prompt past its grace), a usage
    limit still holding past its reset plus grace, an unknown state past its grace period, or a
    run that ended in failure."""
    if not ticket_expects_worker:
        return False
    if runtime_class in (TMUX_MISSING, PROCESS_DEAD, STALLED):
        return True
    if runtime_class == UNKNOWN:
        return seconds_in_class >= policy.unknown_grace
    if runtime_class == WAITING_INPUT:
        return reason in ANSWER_NOW_REASONS or seconds_in_class >= policy.idle_prompt_grace
    if runtime_class == USAGE_LIMITED:
        if resumes_at is None or now is None:
            return seconds_in_class >= policy.usage_limit_pause + policy.usage_limit_grace
        return (now - resumes_at).total_seconds() >= policy.usage_limit_grace
    return runtime_class == EXITED and exit_outcome == "failed"


def classify(facts: RuntimeFacts, observation: Observation, now: datetime, policy: Policy) -> Classification:
    result = _classify(facts, observation, now, policy)
    seconds = 0.0
    same = result.runtime_class == facts.runtime_class
    if same and result.runtime_class == WAITING_INPUT and facts.class_reason:
        same = result.reason == facts.class_reason  # a new question restarts the clock
    if same and facts.class_changed_at:
        seconds = (now - facts.class_changed_at).total_seconds()
    resumes_at = observation.report.resumes_at if observation.report else facts.resumes_at
    attention = needs_attention(
        result.runtime_class, facts.exit_outcome, facts.ticket_expects_worker, seconds, policy,
        reason=result.reason or facts.class_reason, resumes_at=resumes_at, now=now,
    )  # fmt: skip
    return replace(result, needs_attention=attention)


def _classify(facts, obs, now, policy):
    if facts.controller_action == KILL:
        return Classification(KILLED_BY_CONTROLLER, "controller-kill", "stopped by the controller")
    if facts.controller_action == COMPLETE:
        return Classification(COMPLETED_BY_CONTROLLER, "controller-complete", "completed by the controller")
    if facts.runtime_class in FINAL:
        return Classification(facts.runtime_class, "", "")
    if obs.host_silent:
        return Classification(UNKNOWN, "host-silent", obs.host_silent)
    if facts.controller_action == STOPPING:
        return _classify_stopping(facts, _classify_observed(facts, obs, now, policy))
    return _classify_observed(facts, obs, now, policy)


def _clock_skew(facts, now, policy):
    """Where a class depends on time elapsed since a recorded time (a launch not seen yet, a
    console's last activity), that time ahead of now (another host's clock, a bad import) would pin
    the class forever: say so instead. The runtime is `unknown` (so it needs attention after the
    grace) until that time has passed. What a probe sees for certain (a pane alive or dead) wins."""
    for name, moment in (("started_at", facts.started_at), ("last_activity_at", facts.last_activity_at)):
        ahead = (moment - now).total_seconds() if moment else 0
        if ahead > policy.clock_skew_tolerance:
            return f"{name} is {int(ahead)}s in the future ({moment.isoformat()}): clock skew"
    return ""


def _classify_stopping(facts, observed):
    """While the controller is stopping a worker, its death is the controller's doing: never an
    exit, a failure or a missing worker. Until it is seen gone, the runtime keeps its class."""
    if observed.runtime_class in (EXITED, TMUX_MISSING, PROCESS_DEAD, NO_WORKER_EXPECTED):
        message = f"ended while the controller was stopping it ({observed.message})"
        return Classification(KILLED_BY_CONTROLLER, "controller-kill", message)
    return Classification(facts.runtime_class, "", "the controller is stopping it")


def _classify_observed(facts, obs, now, policy):
    if facts.kind == "websocket":
        base = _classify_websocket(facts, now, policy)
    elif not obs.probed:
        base = _unprobed(facts)
    elif facts.kind == "process":
        base = _classify_process(facts, obs, now, policy)
    else:
        base = _classify_tmux(facts, obs, now, policy)
    return _refine(base, facts, obs, now, policy)


def _unprobed(facts):
    """A report without a probe: a live worker stays live (a report proves a pending one started);
    anything else keeps its class (a report never resurrects a missing or settled worker)."""
    if facts.runtime_class in LIVE:
        return Classification(LIVE_CLASS_OF_KIND[facts.kind], WORKING, "reported by the worker")
    return Classification(facts.runtime_class, "", "")


def _latest(*moments):
    present = [m for m in moments if m is not None]
    return max(present) if present else None


def _refine(base, facts, obs, now, policy):
    """A live worker's own reports and its signs of work refine its live class: waiting for a
    person, paused by a usage limit, or stalled (alive, but no sign of progress for a while).
    Any sign of work later than a report returns it to its live class."""
    if base.runtime_class not in (TMUX_LIVE, PROCESS_LIVE, WEBSOCKET_ACTIVE, WEBSOCKET_IDLE):
        return base
    report = obs.report if obs.report and (not facts.report or obs.report.at >= facts.report.at) else facts.report
    worked_at = report.at if report and report.reason == WORKING else None
    progress = _latest(facts.progress_at, obs.progress_at, worked_at)
    if report and report.reason != WORKING:
        worked_since = progress is not None and (progress - report.at).total_seconds() > policy.report_settle
        if not worked_since and report.reason == USAGE_LIMIT:
            resumes = report.resumes_at
            until = f" until {resumes:%Y-%m-%d %H:%M}Z" if resumes else ""
            return Classification(USAGE_LIMITED, USAGE_LIMIT, f"paused by a usage limit{until}")
        if not worked_since and report.reason in WAITING_REASONS:
            waiting = {
                PERMISSION_PROMPT: "waiting for a person to grant a permission",
                ELICITATION: "waiting for a person to answer a question",
                IDLE_PROMPT: "waiting for its next prompt",
            }[report.reason]
            return Classification(WAITING_INPUT, report.reason, waiting)
    if facts.kind != "websocket" and progress is not None:
        quiet_for = (now - _latest(progress, report.at if report else None)).total_seconds()
        if quiet_for >= policy.stall_after:
            return Classification(STALLED, NO_PROGRESS, f"no sign of progress for {int(quiet_for)}s")
    return base


def _classify_websocket(facts, now, policy):
    skew = _clock_skew(facts, now, policy)
    if skew:
        return Classification(UNKNOWN, CLOCK_SKEW, skew)
    last = facts.last_activity_at or facts.started_at
    idle_for = (now - last).total_seconds()
    if idle_for < policy.websocket_idle_after:
        return Classification(WEBSOCKET_ACTIVE, "recent-activity", f"last activity {int(max(idle_for, 0))}s ago")
    return Classification(WEBSOCKET_IDLE, "heartbeat-stale", f"no activity for {int(idle_for)}s")


def _gone(facts, now, policy, missing_class, reason, message, certain=False):
    """A worker that is not there: still starting, missing, or simply not expected. `certain`
    means the observation proves the worker ran and ended (a pid that is gone), so a pending
    runtime does not wait for its start deadline."""
    waited = (now - facts.started_at).total_seconds()
    skew = _clock_skew(facts, now, policy) if facts.runtime_class == PENDING and not certain else ""
    if skew:
        return Classification(UNKNOWN, CLOCK_SKEW, skew)
    if facts.runtime_class == PENDING and not certain and waited < policy.start_timeout:
        return Classification(PENDING, "awaiting-start", f"not seen yet, {int(waited)}s after launch")
    if not facts.ticket_expects_worker:
        return Classification(NO_WORKER_EXPECTED, "ticket-inactive", f"{message}; the ticket expects no worker")
    if facts.runtime_class == PENDING and not certain:
        return Classification(
            missing_class, "start-timeout", f"{message}; never seen alive within {int(policy.start_timeout)}s"
        )
    return Classification(missing_class, reason, message)


def _classify_process(facts, obs, now, policy):
    proc = obs.process
    if facts.pid_create_time is not None and not math.isfinite(facts.pid_create_time):
        message = f"pid {facts.pid}: recorded create time {facts.pid_create_time} is not a number; identity unknowable"
        return Classification(UNKNOWN, NOT_OBSERVED, message)
    if proc is None:
        return Classification(UNKNOWN, NOT_OBSERVED, "no pid recorded to probe")
    if proc.state == UNVERIFIABLE:
        return Classification(UNKNOWN, NOT_OBSERVED, f"pid {proc.pid}: {proc.detail}")
    if proc.state == ALIVE:
        return Classification(PROCESS_LIVE, "process-alive", f"pid {proc.pid} alive")
    if proc.state == DENIED:
        return Classification(UNKNOWN, "access-denied", f"pid {proc.pid}: access denied ({proc.detail})")
    reason, message = {
        ZOMBIE: ("process-zombie", f"pid {proc.pid} is a zombie"),
        REUSED: ("pid-reused", f"pid {proc.pid} now belongs to another process ({proc.detail})"),
    }.get(proc.state, ("process-exited", f"pid {proc.pid} is gone"))
    return _gone(facts, now, policy, PROCESS_DEAD, reason, message, certain=True)


def _classify_tmux(facts, obs, now, policy):
    if obs.tmux_error:
        return Classification(UNKNOWN, "tmux-unreachable", obs.tmux_error)
    pane = obs.pane
    if pane is None:
        return _gone(facts, now, policy, TMUX_MISSING, "session-missing", "tmux session or pane not found")
    if not pane.dead:
        return Classification(TMUX_LIVE, "pane-alive", f"pane {pane.pane_id} pid {pane.pid} running")
    status, signal = pane.dead_status, pane.dead_signal
    if status is None and signal is None:
        if obs.exit_record is None:
            # tmux sees the pty close a moment before it reaps the exit status: settle next pass.
            return Classification(facts.runtime_class, "", f"pane {pane.pane_id} dead, exit status not yet reported")
        status, signal = obs.exit_record
    if signal is not None:
        return Classification(
            EXITED, "pane-dead-signal", f"pane {pane.pane_id} killed by signal {signal}", exit_signal=signal
        )
    if status is None:
        return Classification(EXITED, "pane-dead-exit", f"pane {pane.pane_id} dead, exit status never reported")
    return Classification(
        EXITED, "pane-dead-exit", f"pane {pane.pane_id} exited with status {status}", exit_code=status
    )
