"""Reports from workers and launchers become facts: stored on the runtime, read by the pure
classifier, and ledgered (source hook/api) through ledger.apply — never a direct class write.

One code path for every way a report arrives (the API's hook, notify and exit endpoints, and the
Hermes import): `record_signal`, `record_exit`, `register_runtime`.
"""

from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from runtimes import ledger, liveness, observe, plainsql
from runtimes.intake import batch, tokens
from runtimes.models import (
    FINAL_CLASSES,
    MISSING_CLASSES,
    SELF_REPORTED_CLASSES,
    ExitOutcome,
    LivenessEvent,
    Provider,
    Reason,
    Runtime,
    RuntimeClass,
)
from runtimes.runs import harvest, outcomes
from runtimes.text import safe_text
from runtimes.watch.announce import announce_on_commit
from tickets.models import Comment, Ticket

# The most of a report's fields kept in the ledger's `observed`.
OBSERVED_CHARS = 500


class IntakeError(Exception):
    """A report that cannot be taken; `status` is the HTTP status the API answers with."""

    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status


@dataclass
class Result:
    runtime: Runtime
    changed: bool = False  # a class change was ledgered
    created: bool = False
    transitions: list = field(default_factory=list)


def bounded(observed):
    """A report's kept fields, redacted and bounded, fit for the ledger."""
    clean = {}
    for key, value in observed.items():
        clean[key] = safe_text(value, OBSERVED_CHARS) if isinstance(value, str) else value
    return clean


def _policy():
    return observe.policy_from_settings()


def _report_changes(runtime, signal, now):
    """The runtime fields a signal updates (its report and sign of work)."""
    updates = {"reported_reason": signal.reason, "reported_at": now}
    if signal.reason == liveness.WORKING:
        updates["progress_at"] = now
    if signal.reason == liveness.USAGE_LIMIT:
        already = runtime.runtime_class == RuntimeClass.USAGE_LIMITED and runtime.resumes_at
        pause = timedelta(seconds=settings.CONTROLROOM["USAGE_LIMIT_PAUSE"])
        updates["resumes_at"] = signal.resumes_at or (runtime.resumes_at if already else now + pause)
    return updates


@dataclass
class Report:
    """One read report, waiting for its batch."""

    runtime_id: int
    signal: object  # runtimes.intake.hooks.Signal
    source: str
    now: object  # datetime: when it arrived
    token: object = None  # the API token it came with (checked live, and its scope); None: trusted


def record_signal(runtime_id, signal, source, now=None, token=None):
    """Take one read report (runtimes.intake.hooks.Signal) from a runtime's worker.

    Stores the report (forward only: an older report never overwrites a newer one), classifies
    the runtime with it, and ledgers a change of class (or of waiting reason), in a batch with
    the reports other threads are sending at the same moment (runtimes.intake.batch). A report
    that ends the turn or session also lets this host probe the worker at once, so a run that is
    over is harvested without waiting for the next pass. Repeating a report changes nothing.
    The Result holds the runtime as written; a `token` no longer live is a 401 IntakeError, an
    unknown runtime a 404, one outside the token's scope a 403."""
    report = Report(runtime_id, signal, source, now or timezone.now(), token)
    result = REPORTS.submit(report)
    if signal.ends_run:
        result.transitions += harvest_if_over(result.runtime, report.now, source)
    result.changed = bool(result.transitions)
    return result


# What a batch reads of each runtime's ticket: whether it expects a worker.
TICKET_FIELDS = ("ticket__state", "ticket__kind")


def record_reports(reports):
    """Record reports of distinct runtimes in one transaction: read their rows (and tickets) under
    lock, so each is classified from its state as of now, store the reports, and ledger every
    change in one ledger.apply. Returns a batch.Written: one Result per report, in order, or the
    IntakeError of a report whose token was revoked (401), whose runtime is unknown (404) or out
    of its sender's scope (403); and the ledger's steps for after the commit."""
    # The batch's moment: never before any of its reports, nor before an earlier batch's.
    now = max(timezone.now(), *(report.now for report in reports))
    results, stored, transitions, after = [], {}, [], []
    sent_with = [report.token for report in reports if report.token is not None]
    with transaction.atomic():
        alive = tokens.live(sent_with) if sent_with else set()
        # Locked in primary-key order, so two batches (two processes) never lock in opposite orders.
        locked = plainsql.instances(Runtime, [r.runtime_id for r in reports], TICKET_FIELDS, lock=True)
        fresh = {}
        for runtime, (state, kind) in locked:
            runtime.ticket_expects = Ticket.worker_expected(state, kind)
            fresh[runtime.pk] = runtime
        for report in reports:
            runtime = fresh.get(report.runtime_id)
            if report.token is not None and report.token.pk not in alive:
                results.append(IntakeError(tokens.UNAUTHORIZED, status=401))
                continue
            if runtime is None:
                results.append(IntakeError(f"no runtime {report.runtime_id}", status=404))
                continue
            if report.token is not None and not tokens.may_write(report.token, runtime):
                results.append(IntakeError(tokens.out_of_scope(runtime.pk), status=403))
                continue
            results.append(Result(runtime))
            signal = report.signal
            if signal.reason is None or (runtime.reported_at is not None and runtime.reported_at > report.now):
                continue
            updates = _report_changes(runtime, signal, report.now)
            for name, value in updates.items():
                setattr(runtime, name, value)
            observation = liveness.Observation(
                report=liveness.Report(signal.reason, report.now, runtime.resumes_at), probed=False
            )
            transition = _transition(runtime, observation, report.now, report.source, signal.observed)
            if transition is None:
                stored.setdefault(tuple(updates), []).append(runtime)
            else:  # the report's fields are written with the class, in the ledger's one UPDATE
                transition.updates.update(updates)
                transitions.append((results[-1], transition))
        for fields, runtimes in stored.items():
            plainsql.write_rows(runtimes, fields)
        # The rows were read under lock above: every transition is written.
        ledger.apply([t for _, t in transitions], now, settings.CONTROLROOM_HOST, locked=True, after_commit=after)
    for result, transition in transitions:
        result.transitions.append(transition)
    # The notification step runs once the batch's reports are answered (runtimes.intake.batch).
    return batch.Written(results, after)


# One group commit per process: reports arriving together are written in one transaction.
REPORTS = batch.GroupCommit(record_reports, key=lambda report: report.runtime_id)


def _transition(runtime, observation, now, source, observed):
    """The ledger transition a report makes, or None when the class (and waiting reason) hold."""
    verdict = liveness.classify(observe.facts_of(runtime), observation, now, _policy())
    same_class = verdict.runtime_class == runtime.runtime_class
    reason_moved = verdict.runtime_class in SELF_REPORTED_CLASSES and verdict.reason != runtime.class_reason
    if same_class and not reason_moved:
        return None
    return ledger.Transition(runtime, verdict.runtime_class, verdict.reason, verdict.message, source, bounded(observed))


def harvest_if_over(runtime, now, source):
    """Probe a runtime of this host once; if its worker is gone, record how it ended."""
    if runtime.host != settings.CONTROLROOM_HOST or runtime.runtime_class in FINAL_CLASSES:
        return []
    if runtime.kind == Runtime.Kind.WEBSOCKET:
        return []
    from runtimes.reconcile import transition_for  # reconcile imports intake for the Hermes import

    observation = observe.observe_one(runtime)
    transition = transition_for(runtime, observation, now, _policy(), source)
    if transition is None or transition.to_class not in (*FINAL_CLASSES, *MISSING_CLASSES):
        return []
    return ledger.apply([transition], now, settings.CONTROLROOM_HOST)


# --- A launcher reports how a run ended --------------------------------------------------------


class ExitReason:
    EXITED = "exited"
    KILLED = "killed"
    LOST = "lost"
    ALL = (EXITED, KILLED, LOST)


def _reported_outcome(runtime, exit_code, output):
    if output and runtime.provider in (Provider.CLAUDE, Provider.CODEX):
        outcome = outcomes.classify(runtime.provider, output)
        if harvest.has_final_result(outcome):
            return outcome
    if exit_code == 0:
        return outcomes.Outcome(ExitOutcome.COMPLETED, Reason.EXIT_STATUS, "exited with status 0")
    return outcomes.Outcome(ExitOutcome.FAILED, Reason.EXIT_STATUS, f"exited with status {exit_code}")


def record_exit(runtime, exit_code, reason, output="", now=None):
    """A launcher says the run ended (`exited` with its status, `killed` on purpose, or `lost`).
    A settled runtime changes nothing."""
    now = now or timezone.now()
    if runtime.runtime_class in FINAL_CLASSES:
        return Result(runtime)
    source = LivenessEvent.Source.API
    tail = safe_text(output, OBSERVED_CHARS)
    observed = {"exit_code": exit_code, "reason": reason, "output_tail": tail[-OBSERVED_CHARS:]}
    if reason == ExitReason.KILLED:
        transition = ledger.Transition(
            runtime, RuntimeClass.KILLED_BY_CONTROLLER, Reason.CONTROLLER_KILL,
            "the launcher reports it killed the run", source, observed, updates={"exit_code": exit_code},
        )  # fmt: skip
    elif reason == ExitReason.LOST:
        if runtime.kind == Runtime.Kind.WEBSOCKET:
            raise IntakeError("a websocket console is never lost: report its activity instead")
        missing = RuntimeClass.TMUX_MISSING if runtime.kind == Runtime.Kind.TMUX else RuntimeClass.PROCESS_DEAD
        transition = ledger.Transition(
            runtime, missing, Reason.PROCESS_EXITED, "the launcher reports the run lost", source, observed
        )
    else:
        outcome = _reported_outcome(runtime, exit_code, output)
        transition = harvest.exit_transition(
            runtime, source, exit_code, None, "the launcher reports the exit", observed, outcome
        )
    if transition.to_class == runtime.runtime_class:
        return Result(runtime)
    written = ledger.apply([transition], now, settings.CONTROLROOM_HOST)
    return Result(runtime, changed=bool(written), transitions=written)


# --- External runtimes register themselves ----------------------------------------------------


@dataclass(frozen=True)
class Registration:
    ticket: str
    handle: str
    kind: str
    host: str
    provider: str = Provider.OTHER
    pid: int | None = None
    pid_create_time: float | None = None
    cwd: str = ""
    started_at: object = None
    model: str = ""
    source: str = LivenessEvent.Source.API


def _same_run(runtime, registration):
    if registration.pid is None:
        return True
    if runtime.pid != registration.pid:
        return False
    if registration.pid_create_time is None or runtime.pid_create_time is None:
        return True
    return abs(runtime.pid_create_time - registration.pid_create_time) < 1.0


def register_runtime(registration, now=None):
    """Register an external runtime, idempotent on (host, handle): the same run again changes
    nothing; a different pid or create time is a new run (the old row is settled as superseded,
    then a new row starts). Returns a Result with `created`."""
    now = now or timezone.now()
    reg = registration
    if reg.kind not in Runtime.Kind.values or reg.kind == Runtime.Kind.TMUX:
        raise IntakeError(f"kind must be process or websocket, not {reg.kind!r} (tmux workers are launched here)")
    if reg.kind == Runtime.Kind.PROCESS and reg.pid is None:
        raise IntakeError("a process runtime needs its pid")
    if reg.kind == Runtime.Kind.WEBSOCKET and reg.pid is not None:
        raise IntakeError("a websocket runtime has no pid")
    if reg.provider not in Provider.values:
        raise IntakeError(f"provider must be one of {', '.join(Provider.values)}")
    ticket = Ticket.objects.filter(key=reg.ticket).first()
    if ticket is None:
        raise IntakeError(f"no ticket {reg.ticket!r}", status=404)
    with transaction.atomic():
        latest = Runtime.objects.filter(host=reg.host, handle=reg.handle).order_by("-created_at", "-pk").first()
        if latest is not None and _same_run(latest, reg):
            return Result(latest)
        if latest is not None and latest.runtime_class not in FINAL_CLASSES:
            supersede = ledger.Transition(
                latest, RuntimeClass.EXITED, Reason.SUPERSEDED,
                f"a new run of {reg.handle} registered (pid {reg.pid})", LivenessEvent.Source.API,
                {"new_pid": reg.pid, "new_pid_create_time": reg.pid_create_time},
            )  # fmt: skip
            if not ledger.apply([supersede], now, settings.CONTROLROOM_HOST):
                raise IntakeError(f"{reg.handle} changed meanwhile: try again", status=409)
        started = reg.started_at or now
        try:
            with transaction.atomic():
                runtime = Runtime.objects.create(
                    ticket=ticket, kind=reg.kind, handle=reg.handle, host=reg.host, pid=reg.pid,
                    pid_create_time=reg.pid_create_time, provider=reg.provider, model=reg.model, cwd=reg.cwd,
                    started_at=started, class_changed_at=now, runtime_class=RuntimeClass.PENDING,
                    class_reason=Reason.IMPORTED, class_message=f"registered by {reg.source}",
                )  # fmt: skip
        except IntegrityError:
            raise IntakeError(f"{reg.handle} was registered meanwhile: try again", status=409) from None
        LivenessEvent.objects.create(
            runtime=runtime, at=now, from_class="", to_class=RuntimeClass.PENDING, reason=Reason.IMPORTED,
            message=runtime.class_message, source=reg.source, host=settings.CONTROLROOM_HOST,
            observed=bounded({"pid": reg.pid, "pid_create_time": reg.pid_create_time, "cwd": reg.cwd}),
        )  # fmt: skip
        announce_on_commit(runtime)  # watched at once when it runs on this host
    return Result(runtime, changed=True, created=True)


# The longest comment body kept.
COMMENT_CHARS = 20_000


def post_comment(ticket, kind, author, body, now=None):
    """A controller, validator or human note on a ticket (redacted and bounded)."""
    return Comment.objects.create(
        ticket=ticket, kind=kind, author=safe_text(author, 100), body=safe_text(body, COMMENT_CHARS),
        created_at=now or timezone.now(),
    )  # fmt: skip
