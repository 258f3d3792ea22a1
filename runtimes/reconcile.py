"""One reconciliation pass for one host: gather one snapshot, classify, write what changed.

The only code that joins probes, the classifier and the database. Cost per pass: one tmux call per
distinct socket, one psutil identity check per tracked pid, and a constant number of SQL
statements whatever the number of runtimes (plus a few per transition's ticket effect).
"""

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import close_old_connections, connection
from django.db.models import BooleanField, Count, ExpressionWrapper
from django.utils import timezone

from runtimes import ledger, liveness, observe
from runtimes.models import SELF_REPORTED_CLASSES, LivenessEvent, ReconcilerHeartbeat, Runtime, RuntimeClass
from runtimes.notify import service as notify
from runtimes.runs import harvest
from tickets.models import Ticket

logger = logging.getLogger(__name__)

# Classes in which a runtime's host is watching it: these turn unknown when the host goes silent.
WATCHED_CLASSES = (RuntimeClass.PENDING, RuntimeClass.TMUX_LIVE, RuntimeClass.PROCESS_LIVE, *SELF_REPORTED_CLASSES)
# Classes that mean "a probe saw it alive in this pass" (what last_seen_at records).
SEEN_CLASSES = (RuntimeClass.TMUX_LIVE, RuntimeClass.PROCESS_LIVE, *SELF_REPORTED_CLASSES)
# The fields one pass needs (keeps the load light on large tables).
LOAD_FIELDS = (
    "kind", "handle", "host", "tmux_socket", "tmux_target", "pid", "pid_create_time", "provider", "profile",
    "output_path", "started_at", "last_activity_at", "runtime_class", "class_changed_at", "controller_action",
    "exit_outcome", "exit_code", "exit_signal", "ended_at", "last_seen_at", "ticket", "class_reason",
    "reported_reason", "reported_at", "progress_at", "resumes_at",
)  # fmt: skip


class DatabaseGone(Exception):
    """The SQLite database file a long-running loop opened was deleted or replaced under it."""


def database_file_identity():
    """(device, inode) of the SQLite database file this process uses, or None when the database is
    not a file (PostgreSQL, in-memory SQLite). Connects if needed, so the file exists."""
    if connection.vendor != "sqlite" or connection.is_in_memory_db():
        return None
    connection.ensure_connection()
    info = os.stat(connection.settings_dict["NAME"])
    return (info.st_dev, info.st_ino)


def check_database_file(identity):
    """Raise DatabaseGone when the file behind `identity` is no longer the database at its path:
    SQLite would keep writing into the unlinked file, and a reconnect would create an empty one."""
    if identity is None:
        return
    path = connection.settings_dict["NAME"]
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise DatabaseGone(f"the database file {path} was deleted") from None
    if (info.st_dev, info.st_ino) != identity or info.st_nlink == 0:
        raise DatabaseGone(f"the database file {path} was replaced by another file")


def drop_unusable_connections():
    """Between passes, close connections that are broken (e.g. the server ended the backend) or
    past CONN_MAX_AGE, as Django does between requests, so the next pass reconnects. Never inside a
    caller's transaction (a task run synchronously, a test)."""
    if not connection.in_atomic_block:
        close_old_connections()


@dataclass
class PassSummary:
    host: str
    runtimes: int = 0
    transitions: int = 0
    errors: int = 0
    silent_hosts: list = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    duration_ms: int = 0
    tmux_sockets: int = 0
    error_messages: list = field(default_factory=list)
    # A targeted pass's runtimes and the class each is in after it (what the watcher re-arms on).
    classes: dict = field(default_factory=dict, repr=False)

    def as_dict(self):
        facts = asdict(self)
        del facts["classes"]
        return facts

    def __str__(self):
        return (
            f"{self.host}: {self.runtimes} runtimes, {self.transitions} transitions, "
            f"{self.errors} errors in {self.duration_ms} ms"
        )


def transition_for(runtime, observation, now, policy, source=LivenessEvent.Source.RECONCILER):
    """The transition this observation calls for, or None when the class stays."""
    result = liveness.classify(observe.facts_of(runtime), observation, now, policy)
    observed = observation.as_dict()
    controller = result.runtime_class in (RuntimeClass.KILLED_BY_CONTROLLER, RuntimeClass.COMPLETED_BY_CONTROLLER)
    if runtime.runtime_class == RuntimeClass.USAGE_LIMITED and runtime.ended_at and not controller:
        return None  # paused: its process ended on the limit; only a resume or a person moves it on
    if result.runtime_class == RuntimeClass.EXITED:
        return harvest.exit_transition(
            runtime, source, result.exit_code, result.exit_signal, result.message, observed, now=now
        )
    if result.runtime_class == runtime.runtime_class:
        return None
    gone = result.runtime_class in (RuntimeClass.TMUX_MISSING, RuntimeClass.NO_WORKER_EXPECTED)
    # The session is gone, but the log may show the run finished by itself before it went.
    if gone and runtime.output_path:
        outcome = harvest.outcome_of(runtime)
        if harvest.has_final_result(outcome):
            return harvest.exit_transition(
                runtime, source, pane_message=result.message, observed=observed, outcome=outcome, now=now
            )
    return ledger.Transition(runtime, result.runtime_class, result.reason, result.message, source, observed)


def with_ticket_expectation(runtimes):
    """The fields a pass needs, and whether each runtime's ticket expects a worker, computed in
    SQL (cheaper than building a Ticket object per row)."""
    expects = ExpressionWrapper(Ticket.expects_worker_q(prefix="ticket__"), output_field=BooleanField())
    return runtimes.only(*LOAD_FIELDS).annotate(ticket_expects=expects)


def load_active(host, only=None):
    """This host's unsettled runtimes (only those with the ids in `only`, when given): one query."""
    runtimes = Runtime.objects.active().on_host(host)
    if only is not None:
        runtimes = runtimes.filter(pk__in=list(only))
    return list(with_ticket_expectation(runtimes))


def silent_host_transitions(host, now):
    """Watched runtimes of other hosts whose reconciler has stopped reporting turn unknown."""
    cutoff = now - timedelta(seconds=settings.CONTROLROOM["HOST_SILENT_AFTER"])
    silent = dict(
        ReconcilerHeartbeat.objects.exclude(host=host).filter(finished_at__lt=cutoff).values_list("host", "finished_at")
    )
    if not silent:
        return [], []
    rows = with_ticket_expectation(
        Runtime.objects.filter(host__in=silent, runtime_class__in=WATCHED_CLASSES).exclude(kind=Runtime.Kind.WEBSOCKET)
    )
    transitions, policy = [], observe.policy_from_settings()
    for runtime in rows:
        message = f"host {runtime.host} has not reconciled since {silent[runtime.host]:%Y-%m-%d %H:%M:%S}Z"
        transitions.append(transition_for(runtime, liveness.Observation(host_silent=message), now, policy))
    return [t for t in transitions if t], sorted(silent)


def _import_hermes(summary, now):
    """Mirror this host's Hermes background processes first (never breaks the pass)."""
    from runtimes.intake import hermes  # intake imports reconcile for its harvest-at-once

    try:
        imported = hermes.import_homes(settings.CONTROLROOM["HERMES_HOMES"], now=now)
    except Exception as error:  # a database hiccup here must not cost the pass
        logger.exception("Hermes import failed")
        imported = hermes.ImportSummary(errors=[("*", f"{type(error).__name__}: {error}")])
    for home, why in imported.errors:
        summary.errors += 1
        summary.error_messages.append(f"hermes {home}: {why}"[:300])


def reconcile(host=None, now=None, only=None, source=LivenessEvent.Source.RECONCILER):
    """Run one pass for `host` (default: this host) and return its summary.

    `only` (runtime ids) makes it a targeted pass, the watcher's: the same load → observe →
    classify → ledger.apply for just those runtimes, without the other hosts' silent check, the
    host's counts or the reconcile heartbeat (which stays the scheduled pass's own signal)."""
    host = host or settings.CONTROLROOM_HOST
    now = now or timezone.now()
    started = time.monotonic()
    policy = observe.policy_from_settings()
    summary = PassSummary(host=host)
    if only is None and host == settings.CONTROLROOM_HOST and settings.CONTROLROOM["HERMES_HOMES"]:
        _import_hermes(summary, now)

    runtimes = load_active(host, only)
    snapshot = observe.Snapshot.gather(runtimes)
    summary.runtimes = len(runtimes)
    summary.tmux_sockets = len(snapshot.tmux)

    transitions, seen_alive = [], []
    # last_seen_at is a cheap liveness signal: refreshed when older than LAST_SEEN_REFRESH, so
    # back-to-back passes (--watch) do not rewrite every live row each time.
    refresh_before = now - timedelta(seconds=settings.CONTROLROOM["LAST_SEEN_REFRESH"])
    for runtime in runtimes:
        try:
            transition = transition_for(runtime, snapshot.observe(runtime), now, policy, source)
        except Exception as error:  # one malformed runtime never stops the pass
            logger.exception("cannot classify runtime %s", runtime.pk)
            summary.errors += 1
            summary.error_messages.append(f"{runtime.handle}: {type(error).__name__}: {error}"[:300])
            continue
        if transition:
            transitions.append(transition)
        alive = (transition.to_class if transition else runtime.runtime_class) in SEEN_CLASSES
        if alive and (transition or runtime.last_seen_at is None or runtime.last_seen_at <= refresh_before):
            seen_alive.append(runtime.pk)

    silent = []
    if only is None:
        silent, summary.silent_hosts = silent_host_transitions(host, now)
    written = ledger.apply(transitions + silent, now, host)
    summary.transitions = len(written)
    if seen_alive:
        Runtime.objects.filter(pk__in=seen_alive).update(last_seen_at=now)
    if only is not None:
        # ledger.apply updated the written runtimes in place; a lost compare-and-set means another
        # writer moved the row, which the next look will see.
        summary.classes = {runtime.pk: runtime.runtime_class for runtime in runtimes}
        summary.duration_ms = int((time.monotonic() - started) * 1000)
        return summary

    # Outside the ledger's transaction: episodes that time or tickets changed, retries due.
    notify.after_pass(now)

    summary.counts = dict(
        Runtime.objects.active().on_host(host).values_list("runtime_class").annotate(n=Count("pk")).order_by()
    )
    summary.duration_ms = int((time.monotonic() - started) * 1000)
    ReconcilerHeartbeat.objects.update_or_create(
        host=host,
        defaults={
            "finished_at": timezone.now(),
            "duration_ms": summary.duration_ms,
            "runtimes_seen": summary.runtimes,
            "transitions": summary.transitions,
            "errors": summary.errors,
            "counts": summary.counts,
            "time_zone": settings.CONTROLROOM["HOST_TIME_ZONE"],
        },
    )
    return summary
