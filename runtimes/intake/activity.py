"""Activity reports from websocket consoles: the fast path; the scheduled reconcile stays authoritative.

A report never moves `last_activity_at` backwards (a late, older report changes nothing), a report
from the future is taken as now, and an idle or pending console turns active at once, with a
ledger event from the `heartbeat` source.
"""

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from runtimes import ledger
from runtimes.models import LivenessEvent, Reason, Runtime, RuntimeClass


class ActivityError(Exception):
    """The report cannot be taken; the message says why."""


def record_activity(runtime, at=None, now=None):
    """Record activity at `at` (default now). Returns True when it was newer than what was known."""
    now = now or timezone.now()
    at = min(at or now, now)
    if runtime.kind != Runtime.Kind.WEBSOCKET:
        raise ActivityError(f"{runtime.handle} is a {runtime.kind} runtime: its liveness is probed, not reported.")
    newer = Q(last_activity_at__isnull=True) | Q(last_activity_at__lt=at)
    if not Runtime.objects.filter(pk=runtime.pk).filter(newer).update(last_activity_at=at):
        return False
    runtime.last_activity_at = at
    quiet_for = (now - at).total_seconds()
    wakes = runtime.runtime_class in (RuntimeClass.WEBSOCKET_IDLE, RuntimeClass.PENDING)
    if wakes and quiet_for < settings.CONTROLROOM["WEBSOCKET_IDLE_AFTER"]:
        transition = ledger.Transition(
            runtime,
            RuntimeClass.WEBSOCKET_ACTIVE,
            Reason.RECENT_ACTIVITY,
            f"activity reported at {at:%H:%M:%S}Z",
            LivenessEvent.Source.HEARTBEAT,
        )
        ledger.apply([transition], now, settings.CONTROLROOM_HOST)
    return True
