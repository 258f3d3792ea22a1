"""What the controller (a person or the reaper) does to workers on purpose: stop, recover, reap.

Each action is recorded as a controller transition, so it never reads as a provider failure and
never raises a failure banner.
"""

import contextlib
import re
import time
from dataclasses import dataclass, field
from functools import reduce
from operator import or_

import psutil
from django.conf import settings
from django.db import transaction
from django.db.models import Q, TextChoices
from django.utils import timezone
from django_q.tasks import async_task

from runtimes import ledger, liveness
from runtimes.models import FINAL_CLASSES, LivenessEvent, Reason, Runtime, RuntimeClass
from runtimes.probes import processes as process_probe
from runtimes.probes import tmux as tmux_probe
from tickets.models import Ticket

SESSION_PREFIX = "cr-"
_SESSION_TICKET = re.compile(r"^cr-(?P<project>[a-z][a-z0-9]{1,9})-(?P<number>[1-9][0-9]{0,7})(?:-|\Z)")


class ControllerError(Exception):
    """The action could not be carried out; the message says why and what to do."""


def session_name_for(ticket_key, suffix):
    return f"{SESSION_PREFIX}{ticket_key.lower()}-{suffix}"


def ticket_key_of_session(name):
    match = _SESSION_TICKET.match(name)
    return f"{match['project'].upper()}-{match['number']}" if match else None


A = Runtime.ControllerAction


class StopState(TextChoices):
    KILLED = "killed", "killed here and recorded as killed-by-controller"
    REQUESTED = "requested", "handed to the runtime's own host; nothing recorded until it stops it"


@dataclass
class StopResult:
    """What a stop did: killed here, or requested from the runtime's own host (a django-q2 task)."""

    state: StopState
    message: str
    task_id: str = ""


def terminate_process(pid, create_time, grace):
    """SIGTERM, then SIGKILL after `grace` seconds, to the process with this identity and its
    children. Never signals a pid whose start time is unknown or differs from the recorded one.
    Returns (gone, description): `gone` says the identity check found the worker's process no
    longer running (stopped now, already gone, or its pid now someone else's)."""
    if create_time is None:
        state = process_probe.probe_one(pid, None).state
        if state in (liveness.GONE, liveness.ZOMBIE):
            return True, f"pid {pid} already gone"
        return False, f"pid {pid}: start time unknown, not signalled"
    try:
        process = psutil.Process(pid)
        if abs(process.create_time() - create_time) > process_probe.CREATE_TIME_TOLERANCE:
            return True, f"pid {pid} now belongs to another process: not signalled"
        family = [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return True, f"pid {pid} already gone"
    except psutil.AccessDenied:
        raise ControllerError(f"Not allowed to signal pid {pid}: run the command as the worker's user.") from None
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.terminate()
    alive = _wait_gone(family, grace)
    for member in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    left = _wait_gone(alive, grace)
    text = f"pid {pid}: SIGTERM" + (f", SIGKILL to {len(alive)} after {grace:g}s" if alive else "")
    return process not in left, text + (" — still running" if process in left else "")


def _running(process):
    """Alive and not a zombie (a zombie has ended; only its parent's wait is missing). A child
    of this process that has ended is reaped here."""
    try:
        process.wait(timeout=0)
        return False
    except psutil.TimeoutExpired:
        pass
    try:
        if process.status() != psutil.STATUS_ZOMBIE:
            return True
    except psutil.NoSuchProcess:
        return False
    # It ended between the two looks: reap it too if it is our child (a zombie we never wait for
    # would stay in the process table as long as we live).
    with contextlib.suppress(psutil.TimeoutExpired, psutil.NoSuchProcess):
        process.wait(timeout=0)
    return False


def _wait_gone(processes, timeout):
    """Wait up to `timeout` seconds for the processes to end; return those still running."""
    deadline = time.monotonic() + timeout
    alive = [p for p in processes if _running(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.01)
        alive = [p for p in alive if _running(p)]
    return alive


def _kill_tmux_session(socket, target):
    session = target.split(":", 1)[0]
    try:
        tmux_probe.kill_session(socket, session)
    except tmux_probe.TmuxError as error:
        raise ControllerError(f"Cannot stop tmux session {session}: {error}") from None
    return f"tmux session {session} killed"


def _session_mark(socket, session):
    try:
        return tmux_probe.session_mark(socket, session)
    except tmux_probe.TmuxError as error:
        raise ControllerError(f"Cannot check tmux session {session}: {error}") from None


def _stop_session(runtime, process_gone):
    """Kill the runtime's tmux session only if it carries this runtime's launch mark. Returns a
    description, or raises ControllerError when the worker cannot be shown stopped."""
    session = runtime.tmux_target.split(":", 1)[0]
    where = runtime.tmux_socket or "the default socket"
    mark = _session_mark(runtime.tmux_socket, session)
    if mark is None:
        # No such session (or no server): the worker is gone only if its identity check agrees.
        if process_gone is False:
            raise ControllerError(
                f"tmux session {session} is not on {where}, but pid {runtime.pid} (start time unknown) still"
                " exists: cannot tell that the worker stopped; nothing was signalled."
            )
        return f"tmux session {session} already gone"
    if runtime.launch_token and mark == runtime.launch_token:
        return _kill_tmux_session(runtime.tmux_socket, session)
    if process_gone:
        return f"tmux session {session} is not marked as this runtime's launch: left alone"
    raise ControllerError(
        f"tmux session {session} on {where} is not marked as Control Room's launch of {runtime.handle}:"
        " not killed, nothing was signalled."
    )


def _signal_worker(runtime):
    """Stop the worker itself (identity-checked); returns what was done, one item each."""
    done, process_gone = [], None
    if runtime.pid:
        process_gone, text = terminate_process(runtime.pid, runtime.pid_create_time, settings.CONTROLROOM["STOP_GRACE"])
        done.append(text)
    if runtime.kind == Runtime.Kind.TMUX:
        try:
            done.append(_stop_session(runtime, process_gone))
        except ControllerError as error:
            if not process_gone:
                raise
            # The worker itself was stopped: record the kill, or its end would read as a failure.
            done.append(f"session left behind: {error}")
    elif runtime.kind == Runtime.Kind.PROCESS and not process_gone:
        raise ControllerError(f"{done[-1] if done else 'no pid recorded'}: cannot show that {runtime.handle} stopped.")
    return done


def stop_runtime(runtime, by, now=None):
    """Stop a worker. On its own host: record the intent (controller_action `stopping`, through
    the ledger's compare-and-set) before any signal, so a reconciler that sees it die records a
    controller kill, never an exit or a failure; then signal it and write the final
    killed-by-controller row. For another host's worker, hand the stop to that host's cluster.
    Returns a StopResult, or None when the runtime had already ended."""
    if runtime.runtime_class in FINAL_CLASSES:
        ledger.set_controller_action(runtime, A.NONE, (A.STOP_REQUESTED,), settled_too=True)
        return None
    if runtime.host != settings.CONTROLROOM_HOST:
        return request_stop(runtime, by)
    if not ledger.set_controller_action(runtime, A.STOPPING, (A.NONE, A.STOP_REQUESTED, A.STOPPING)):
        runtime.refresh_from_db()
        if runtime.runtime_class in FINAL_CLASSES:
            return None
        raise ControllerError(f"{runtime.handle} is {runtime.controller_action}: try again.")
    try:
        done = _signal_worker(runtime)
    except ControllerError:
        # Nothing was stopped: the runtime is back to being watched as before.
        ledger.set_controller_action(runtime, A.NONE, (A.STOPPING,))
        raise
    message = f"stopped by {by}: " + ("; ".join(done) if done else "nothing to signal")
    _controller_transition(runtime, RuntimeClass.KILLED_BY_CONTROLLER, Reason.CONTROLLER_KILL, A.KILL, message, now)
    return StopResult(StopState.KILLED, message)


def request_stop(runtime, by):
    """Ask the runtime's own host to stop it: a django-q2 task routed to that host's cluster (the
    same routing as its reconcile schedule). Until it runs, the runtime keeps its class and shows
    controller_action `stop-requested`."""
    if not runtime.host:
        raise ControllerError(f"{runtime.handle} records no host: stop it on the host it runs on.")
    if not ledger.set_controller_action(runtime, A.STOP_REQUESTED, (A.NONE, A.STOP_REQUESTED)):
        runtime.refresh_from_db()
        if runtime.runtime_class in FINAL_CLASSES:
            return None
        raise ControllerError(f"{runtime.handle} is already {runtime.controller_action} on {runtime.host}.")
    try:
        task_id = async_task("runtimes.tasks.stop_runtime", runtime.pk, by, cluster=runtime.host)
    except Exception as error:  # any broker failure: the request is withdrawn and reported
        ledger.set_controller_action(runtime, A.NONE, (A.STOP_REQUESTED,))
        raise ControllerError(
            f"Could not queue the stop of {runtime.handle} for host {runtime.host}: {error}"
        ) from None
    return StopResult(StopState.REQUESTED, f"stop requested by {by}; host {runtime.host} will stop it", task_id)


def stop_requested(runtime_id, by):
    """Carry out a stop another host requested (the django-q2 task): only on the runtime's own host."""
    runtime = Runtime.objects.select_related("ticket").filter(pk=runtime_id).first()
    if runtime is None:
        return f"runtime #{runtime_id} no longer exists"
    if runtime.host != settings.CONTROLROOM_HOST:
        raise ControllerError(f"{runtime.handle} runs on {runtime.host}, not {settings.CONTROLROOM_HOST}: not stopped.")
    result = stop_runtime(runtime, by)
    return f"{runtime.handle}: " + (result.message if result else f"already {runtime.runtime_class}")


def recover_runtime(runtime, by, now=None):
    """Record that the controller completed the runtime's work; clears the ticket's banner."""
    if runtime.runtime_class == RuntimeClass.COMPLETED_BY_CONTROLLER:
        return None
    message = f"work completed by {by}"
    return _controller_transition(
        runtime, RuntimeClass.COMPLETED_BY_CONTROLLER, Reason.CONTROLLER_COMPLETE, A.COMPLETE, message, now
    )


def _controller_transition(runtime, to_class, reason, action, message, now):
    """Write the controller's transition; if another writer changed the row first, once more from
    what it holds now. A reconciler that already recorded the death under the controller's
    intent wrote the class: the controller's action completes it."""
    now = now or timezone.now()
    for attempt in range(3):
        if attempt:
            runtime.refresh_from_db()
            if runtime.runtime_class == to_class:
                ledger.set_controller_action(runtime, action, (A.STOPPING,), settled_too=True)
                return None
        transition = ledger.Transition(
            runtime, to_class, reason, message, LivenessEvent.Source.CONTROLLER, updates={"controller_action": action}
        )
        # One row: wait for a reconciler that holds it, then compare with what it wrote.
        written = ledger.apply([transition], now, settings.CONTROLROOM_HOST, wait=True)
        if written:
            return written[0]
    return None


@dataclass
class ReapPlan:
    runtimes: list = field(default_factory=list)  # live runtimes whose ticket is closed
    orphans: list = field(default_factory=list)  # (socket, session name, mark) no runtime owns
    unmarked: list = field(default_factory=list)  # (socket, session name): cr-… but not Control Room's
    done: list = field(default_factory=list)  # what was done, one line each
    failed: list = field(default_factory=list)  # what could not be done, and why


def plan_reap(host, extra_sockets=()):
    """Three queries and one tmux call per socket: the sockets of this host's unsettled runtimes
    (plus any named) are listed, and only the Control Room sessions found there are looked up.
    An unowned session is an orphan only if it carries Control Room's launch mark (one tmux call
    each); one without it merely looks like ours, and is left alone."""
    unsettled = Runtime.objects.on_host(host).active().exclude(kind=Runtime.Kind.WEBSOCKET)
    live_on_closed = list(unsettled.filter(ticket__state__in=Ticket.CLOSED_STATES).select_related("ticket"))
    sockets = set(unsettled.filter(kind=Runtime.Kind.TMUX).values_list("tmux_socket", flat=True).distinct())
    found = {
        (socket, pane.session)
        for socket, snap in tmux_probe.snapshot(sockets | set(extra_sockets)).items()
        for pane in snap.by_target.values()
        if pane.session.startswith(SESSION_PREFIX)
    }
    names = {session for _, session in found}
    owned = set()
    if names:
        # A runtime owns a session whether its target is the session or one of its panes.
        targets = reduce(or_, (Q(tmux_target=name) | Q(tmux_target__startswith=f"{name}:") for name in names))
        rows = Runtime.objects.on_host(host).filter(targets, kind=Runtime.Kind.TMUX)
        owned = {(socket, target.split(":", 1)[0]) for socket, target in rows.values_list("tmux_socket", "tmux_target")}
    plan = ReapPlan(runtimes=live_on_closed)
    for socket, session in sorted(found - owned):
        try:
            mark = tmux_probe.session_mark(socket, session)
        except tmux_probe.TmuxError as error:
            plan.failed.append(f"could not check orphan session {session}: {error}")
            continue
        if mark:
            plan.orphans.append((socket, session, mark))
        elif mark == "":
            plan.unmarked.append((socket, session))
    return plan


def reap(host, by="reaper", extra_sockets=(), dry_run=False, now=None):
    """Stop what the plan names; one worker that cannot be stopped never stops the sweep."""
    plan = plan_reap(host, extra_sockets)
    if dry_run:
        return plan
    now = now or timezone.now()
    for runtime in plan.runtimes:
        try:
            result = stop_runtime(runtime, by, now)
        except ControllerError as error:
            plan.failed.append(f"could not stop {runtime.handle}: {error}")
            continue
        done = "stopped" if result is None or result.state == StopState.KILLED else f"requested {runtime.host} to stop"
        plan.done.append(f"{done} {runtime.handle} (ticket {runtime.ticket.key} is {runtime.ticket.state})")
    for socket, session, mark in plan.orphans:
        try:
            plan.done.append(_reap_orphan(host, socket, session, mark, by, now))
        except ControllerError as error:
            plan.failed.append(f"could not stop orphan session {session}: {error}")
    return plan


def _reap_orphan(host, socket, session, mark, by, now):
    """Record an unowned Control Room session as a runtime of its ticket, then stop it, so the
    kill is in the ledger like any other; a session naming no known ticket is only killed. The
    session is killed only while it still carries the mark the plan found."""
    key = ticket_key_of_session(session)
    ticket = Ticket.objects.filter(key=key).first() if key else None
    if ticket is None:
        if _session_mark(socket, session) != mark:
            raise ControllerError(f"tmux session {session} changed since it was found: left alone")
        _kill_tmux_session(socket, session)
        return f"killed orphan session {session} on {socket or 'default'} (no ticket {key or '?'} to record it on)"
    with transaction.atomic():
        runtime, _ = Runtime.objects.get_or_create(
            host=host,
            handle=f"tmux:{session}" + (f"@{socket}" if socket else ""),
            defaults={
                "ticket": ticket,
                "kind": Runtime.Kind.TMUX,
                "tmux_socket": socket,
                "tmux_target": session,
                "launch_token": mark,
                "class_reason": Reason.IMPORTED,
                "started_at": now,
            },
        )
        LivenessEvent.objects.create(
            runtime=runtime, at=now, to_class=runtime.runtime_class, reason=Reason.IMPORTED,
            message="unowned Control Room session found by the reaper", source=LivenessEvent.Source.IMPORT, host=host,
        )  # fmt: skip
    stop_runtime(runtime, by, now)
    return f"stopped orphan session {session} on {socket or 'default'} (recorded on {ticket.key})"
