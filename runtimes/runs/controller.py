"""What the controller (a person or the reaper) does to workers on purpose: stop, recover, reap.

Each action is recorded as a controller transition, so it never reads as a provider failure and
never raises a failure banner.
"""

import contextlib
import re
from dataclasses import dataclass, field
from functools import reduce
from operator import or_

import psutil
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from runtimes import ledger
from runtimes.models import FINAL_CLASSES, LivenessEvent, Reason, Runtime, RuntimeClass
from runtimes.probes import tmux as tmux_probe
from tickets.models import Ticket

SESSION_PREFIX = "cr-"
_SESSION_TICKET = re.compile(r"^cr-(?P<project>[a-z][a-z0-9]{1,9})-(?P<number>[1-9][0-9]{0,7})(?:-|$)")


class ControllerError(Exception):
    """The action could not be carried out; the message says why and what to do."""


def session_name_for(ticket_key, suffix):
    return f"{SESSION_PREFIX}{ticket_key.lower()}-{suffix}"


def ticket_key_of_session(name):
    match = _SESSION_TICKET.match(name)
    return f"{match['project'].upper()}-{match['number']}" if match else None


def terminate_process(pid, create_time, grace):
    """SIGTERM, then SIGKILL after `grace` seconds, to the process with this identity and its
    children. Returns a short description of what was done."""
    try:
        process = psutil.Process(pid)
        if create_time is not None and abs(process.create_time() - create_time) > 1.0:
            return f"pid {pid} now belongs to another process: not signalled"
        family = [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return f"pid {pid} already gone"
    except psutil.AccessDenied:
        raise ControllerError(f"Not allowed to signal pid {pid}: run the command as the worker's user.") from None
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.terminate()
    _, alive = psutil.wait_procs(family, timeout=grace)
    for member in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    psutil.wait_procs(alive, timeout=grace)
    return f"pid {pid}: SIGTERM" + (f", SIGKILL to {len(alive)} after {grace:g}s" if alive else "")


def _kill_tmux_session(socket, target):
    session = target.split(":", 1)[0]
    try:
        tmux_probe.kill_session(socket, session)
    except tmux_probe.TmuxError as error:
        raise ControllerError(f"Cannot stop tmux session {session}: {error}") from None
    return f"tmux session {session} killed"


def stop_runtime(runtime, by, now=None):
    """Stop a worker and record it as killed by the controller. Returns the transition written,
    or None when the runtime had already ended."""
    if runtime.runtime_class in FINAL_CLASSES:
        return None
    grace = settings.CONTROLROOM["STOP_GRACE"]
    done = []
    if runtime.pid:
        done.append(terminate_process(runtime.pid, runtime.pid_create_time, grace))
    if runtime.kind == Runtime.Kind.TMUX:
        try:
            done.append(_kill_tmux_session(runtime.tmux_socket, runtime.tmux_target))
        except ControllerError as error:
            if not runtime.pid:
                raise
            # The worker itself was stopped: record the kill, or its end would read as a failure.
            done.append(f"session left behind: {error}")
    message = f"stopped by {by}: " + ("; ".join(done) if done else "nothing to signal")
    return _controller_transition(
        runtime, RuntimeClass.KILLED_BY_CONTROLLER, Reason.CONTROLLER_KILL, "kill", message, now
    )


def recover_runtime(runtime, by, now=None):
    """Record that the controller completed the runtime's work; clears the ticket's banner."""
    if runtime.runtime_class == RuntimeClass.COMPLETED_BY_CONTROLLER:
        return None
    message = f"work completed by {by}"
    return _controller_transition(
        runtime, RuntimeClass.COMPLETED_BY_CONTROLLER, Reason.CONTROLLER_COMPLETE, "complete", message, now
    )


def _controller_transition(runtime, to_class, reason, action, message, now):
    """Write the controller's transition; if another writer changed the class first, once more
    from the class it has now."""
    now = now or timezone.now()
    for attempt in range(2):
        if attempt:
            runtime.refresh_from_db()
            if runtime.runtime_class == to_class:
                return None
        transition = ledger.Transition(
            runtime, to_class, reason, message, LivenessEvent.Source.CONTROLLER, updates={"controller_action": action}
        )
        written = ledger.apply([transition], now, settings.CONTROLROOM_HOST)
        if written:
            return written[0]
    return None


@dataclass
class ReapPlan:
    runtimes: list = field(default_factory=list)  # live runtimes whose ticket is closed
    orphans: list = field(default_factory=list)  # (socket, session name) no runtime owns
    done: list = field(default_factory=list)  # what was done, one line each
    failed: list = field(default_factory=list)  # what could not be done, and why


def plan_reap(host, extra_sockets=()):
    """Three queries and one tmux call per socket: the sockets of this host's unsettled runtimes
    (plus any named) are listed, and only the Control Room sessions found there are looked up."""
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
    return ReapPlan(runtimes=live_on_closed, orphans=sorted(found - owned))


def reap(host, by="reaper", extra_sockets=(), dry_run=False, now=None):
    """Stop what the plan names; one worker that cannot be stopped never stops the sweep."""
    plan = plan_reap(host, extra_sockets)
    if dry_run:
        return plan
    now = now or timezone.now()
    for runtime in plan.runtimes:
        try:
            stop_runtime(runtime, by, now)
        except ControllerError as error:
            plan.failed.append(f"could not stop {runtime.handle}: {error}")
            continue
        plan.done.append(f"stopped {runtime.handle} (ticket {runtime.ticket.key} is {runtime.ticket.state})")
    for socket, session in plan.orphans:
        try:
            plan.done.append(_reap_orphan(host, socket, session, by, now))
        except ControllerError as error:
            plan.failed.append(f"could not stop orphan session {session}: {error}")
    return plan


def _reap_orphan(host, socket, session, by, now):
    """Record an unowned Control Room session as a runtime of its ticket, then stop it, so the
    kill is in the ledger like any other; a session naming no known ticket is only killed."""
    key = ticket_key_of_session(session)
    ticket = Ticket.objects.filter(key=key).first() if key else None
    if ticket is None:
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
