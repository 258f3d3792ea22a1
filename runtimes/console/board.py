"""What the console shows, computed in a few bounded queries: the attention lane, the fleet
strip, a runtime's timeline, output tail and attach command, and a ticket's activity feed.

Views render these; nothing here renders HTML. Every function that queries says so.
"""

import re
import shlex
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.db.models import Count, Sum
from django.utils import timezone

from runtimes.models import (
    FINAL_CLASSES,
    LIVE_CLASSES,
    MISSING_CLASSES,
    ExitOutcome,
    LivenessEvent,
    Reason,
    ReconcilerHeartbeat,
    Runtime,
    RuntimeClass,
    WatcherHeartbeat,
)
from runtimes.probes import tmux as tmux_probe
from runtimes.runs.harvest import read_output
from runtimes.text import safe_text

# The lane lists at most this many runtimes (oldest first); the rest are counted.
LANE_LIMIT = 200
# The lane reads output for its first rows only, a few lines each.
LANE_TAILS = 10
LANE_TAIL_LINES = 3
# The runtime page's output tail.
TAIL_LINES = 40
TAIL_BYTES = 64 * 1024
CAPTURE_TIMEOUT = 2.0
# The timeline draws at most this many ledger rows (the newest).
TIMELINE_EVENTS = 200
# The ticket page's activity feed: newest entries of each kind.
ACTIVITY_LIMIT = 100
# ... from the ledgers of its newest runtimes.
FEED_RUNTIMES = 200

_CONTROL = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07|[\x00-\x08\x0b-\x1f\x7f]")


# --- output tail and attach command -------------------------------------------------------------


@dataclass
class Tail:
    """The last lines a worker printed, where they came from, or why there are none."""

    lines: list = field(default_factory=list)
    source: str = ""
    note: str = ""


def clean_lines(raw, lines):
    """Terminal text made safe to show: controls stripped, secrets redacted, the last `lines`
    non-blank lines, each bounded. Pure."""
    text = safe_text(raw, limit=TAIL_BYTES * 2)
    text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    rows = [row for row in text.split("\n") if row.strip()]
    return [row[:500] for row in rows[-lines:]]


def output_tail(runtime, lines=TAIL_LINES):
    """The last lines of a runtime's output: tmux capture-pane while its pane may still exist
    (also a dead pane kept by remain-on-exit), else the tail of its output log. Calls tmux
    (bounded by a timeout) and reads at most TAIL_BYTES of the log; never raises."""
    notes = []
    local = runtime.host == settings.CONTROLROOM_HOST
    if runtime.kind == Runtime.Kind.TMUX and runtime.tmux_target and runtime.runtime_class not in MISSING_CLASSES:
        if local:
            try:
                raw = tmux_probe.capture_pane(runtime.tmux_socket, runtime.tmux_target, lines, CAPTURE_TIMEOUT)
            except tmux_probe.TmuxError as error:
                notes.append(safe_text(str(error), 300))
            else:
                shown = clean_lines(raw, lines)
                if shown:
                    return Tail(shown, "tmux capture-pane")
        else:
            notes.append(f"its pane is on {runtime.host or 'another host'}")
    if runtime.output_path:
        try:
            raw = read_output(runtime.output_path, limit=TAIL_BYTES)
        except OSError as error:
            notes.append(f"output log unreadable: {error.strerror or error}")
        else:
            return Tail(clean_lines(raw, lines), "output log")
    return Tail([], "", "; ".join(notes) or "no output recorded")


def attach_command(runtime):
    """`tmux -L sock attach -t session` (argv-quoted) for a tmux runtime, else ''. Pure."""
    if runtime.kind != Runtime.Kind.TMUX or not runtime.tmux_target:
        return ""
    target = runtime.tmux_target
    session = target if target.startswith("%") else target.split(":", 1)[0]
    return shlex.join(["tmux", *tmux_probe.socket_args(runtime.tmux_socket), "attach", "-t", session])


# --- attention lane --------------------------------------------------------------------------------


@dataclass
class LaneGroup:
    reason: str
    label: str
    runtimes: list


@dataclass
class Lane:
    groups: list
    total: int
    shown: int


def attention_lane(now, limit=LANE_LIMIT, tails=LANE_TAILS):
    """Every runtime needing attention, grouped by reason (the group with the oldest runtime
    first), oldest first inside a group; the first `tails` runtimes carry `.tail`. Two queries
    plus at most `tails` tmux calls or log reads."""
    queryset = Runtime.objects.needs_attention(now).select_related("ticket")
    rows = list(queryset.order_by("class_changed_at", "pk")[:limit])
    total = len(rows) if len(rows) < limit else queryset.count()
    groups = {}
    for index, runtime in enumerate(rows):
        runtime.tail = output_tail(runtime, LANE_TAIL_LINES) if index < tails else None
        groups.setdefault(runtime.class_reason, []).append(runtime)
    labels = dict(Reason.choices)
    return Lane(
        groups=[LaneGroup(reason, labels.get(reason, reason), members) for reason, members in groups.items()],
        total=total,
        shown=len(rows),
    )


# --- fleet strip -------------------------------------------------------------------------------------


@dataclass
class HostHealth:
    host: str
    live: int
    attention: int
    heartbeat_at: datetime | None
    age_seconds: float | None
    silent: bool
    errors: int = 0
    total: int = 0
    watcher: str = ""  # "watching", "silent", "stopped", or "" when no watcher ever ran there

    @property
    def never_reported(self):
        return self.heartbeat_at is None


@dataclass
class Fleet:
    by_class: list
    hosts: list
    failures_today: int
    spend_today: object  # Decimal, or None where no run reports a cost


def start_of_day(now):
    """Local midnight (TIME_ZONE) of the day `now` falls in."""
    local = timezone.localtime(now)
    return local.replace(hour=0, minute=0, second=0, microsecond=0)


def fleet(now):
    """Runtimes per class, live and attention runtimes per host with each host's reconcile
    heartbeat age, failures and spend since midnight. A handful of aggregate queries."""
    counts = dict(Runtime.objects.values_list("runtime_class").annotate(n=Count("pk")).order_by())
    by_class = [(value, counts[value]) for value in RuntimeClass.values if counts.get(value)]
    return Fleet(by_class, host_health(now), failures_today(now), spend_today(now))


def host_health(now):
    """Every host seen in runtimes or heartbeats, by name: its runtimes (all, live, needing
    attention) and its last reconcile heartbeat's age; a host that never reported has none and
    counts as silent. Four aggregate queries, whatever the number of hosts or runtimes."""
    per_host = defaultdict(lambda: {"total": 0, "live": 0, "attention": 0})
    for host, n in Runtime.objects.values_list("host").annotate(n=Count("pk")).order_by():
        per_host[host]["total"] = n
    live_rows = Runtime.objects.filter(runtime_class__in=LIVE_CLASSES).values_list("host").annotate(n=Count("pk"))
    for host, n in live_rows.order_by():
        per_host[host]["live"] = n
    attention_rows = Runtime.objects.needs_attention(now).values_list("host").annotate(n=Count("pk"))
    for host, n in attention_rows.order_by():
        per_host[host]["attention"] = n
    silent_after = settings.CONTROLROOM["HOST_SILENT_AFTER"]
    beats = {beat.host: beat for beat in ReconcilerHeartbeat.objects.all()}
    watchers = {watcher.host: watcher.state(now) for watcher in WatcherHeartbeat.objects.all()}
    hosts = []
    for host in sorted(set(per_host) | set(beats) | set(watchers)):
        beat = beats.get(host)
        age = (now - beat.finished_at).total_seconds() if beat else None
        hosts.append(
            HostHealth(
                host=host,
                live=per_host[host]["live"],
                attention=per_host[host]["attention"],
                heartbeat_at=beat.finished_at if beat else None,
                age_seconds=age,
                silent=age is None or age > silent_after,
                errors=beat.errors if beat else 0,
                total=per_host[host]["total"],
                watcher=watchers.get(host, ""),
            )
        )
    return hosts


def failures_today(now):
    """Runtimes that failed since local midnight: a ledger row into a missing class, or into
    `exited` with a failed outcome. Driven by today's ledger rows (its time index), never a
    scan of all runtimes: three queries."""
    today = LivenessEvent.objects.filter(at__gte=start_of_day(now))
    missing = set(today.filter(to_class__in=MISSING_CLASSES).values_list("runtime_id", flat=True).distinct())
    exited = today.filter(to_class=RuntimeClass.EXITED).values("runtime_id")
    failed = Runtime.objects.filter(pk__in=exited, exit_outcome=ExitOutcome.FAILED).values_list("pk", flat=True)
    return len(missing | set(failed))


def spend_today(now):
    """The cost of runs that ended since local midnight (found through today's ledger rows into
    an ended class), or None when none of them reports a cost (unknown is not zero). One query."""
    midnight = start_of_day(now)
    ended = LivenessEvent.objects.filter(at__gte=midnight, to_class__in=FINAL_CLASSES).values("runtime_id")
    rows = Runtime.objects.filter(pk__in=ended, ended_at__gte=midnight, cost_usd__isnull=False)
    return rows.aggregate(total=Sum("cost_usd"))["total"]


# --- a runtime's timeline ------------------------------------------------------------------------------


@dataclass
class Span:
    runtime_class: str
    reason: str
    start: datetime
    end: datetime
    left: float  # percent of the drawn period
    width: float
    ongoing: bool


def timeline(events, started_at, now, ended_at=None):
    """Spans of class over time from ledger rows (oldest first: objects with at, to_class,
    reason). The last span runs to `ended_at` for a settled runtime, else to `now`. Pure."""
    events = [event for event in events if event.at is not None]
    if not events:
        return []
    first = min(started_at, events[0].at) if started_at else events[0].at
    last = max(ended_at or now, events[-1].at)
    period = max((last - first).total_seconds(), 1.0)
    spans = []
    for index, event in enumerate(events):
        end = events[index + 1].at if index + 1 < len(events) else last
        left = (event.at - first).total_seconds() / period * 100
        width = (end - event.at).total_seconds() / period * 100
        spans.append(
            Span(
                runtime_class=event.to_class,
                reason=event.reason,
                start=event.at,
                end=end,
                left=round(left, 3),
                width=round(max(width, 0.4), 3),
                ongoing=index + 1 == len(events) and event.to_class not in FINAL_CLASSES,
            )
        )
    return spans


def runtime_events(runtime, limit=TIMELINE_EVENTS):
    """The runtime's newest `limit` ledger rows, oldest first (one query on its ledger index)."""
    rows = list(runtime.events.order_by("-at", "-pk")[:limit])
    rows.reverse()
    return rows


# --- a ticket's activity feed ----------------------------------------------------------------------------


@dataclass
class Activity:
    at: datetime
    kind: str  # comment, verdict, ledger
    actor: str
    title: str
    body: str = ""
    runtime: object = None
    extra: dict = field(default_factory=dict)


def ticket_activity(ticket, limit=ACTIVITY_LIMIT):
    """Comments, verdicts and the ledger rows of the ticket's (newest FEED_RUNTIMES) runtimes,
    newest first, at most `limit` in all (four queries, each bounded)."""
    entries = []
    for comment in ticket.comments.order_by("-created_at", "-pk")[:limit]:
        entries.append(
            Activity(comment.created_at, "comment", comment.author or comment.get_kind_display(),
                     comment.get_kind_display(), comment.body)
        )  # fmt: skip
    for verdict in ticket.verdicts.select_related("runtime").order_by("-created_at", "-pk")[:limit]:
        entries.append(
            Activity(verdict.created_at, "verdict", verdict.author or verdict.get_gate_display(),
                     f"{verdict.get_gate_display()} verdict: {verdict.get_outcome_display()}", verdict.summary,
                     verdict.runtime)
        )  # fmt: skip
    # The ticket's newest runtimes first, then their ledger (each lookup on its own index).
    runtime_ids = list(ticket.runtimes.order_by("-started_at", "-pk").values_list("pk", flat=True)[:FEED_RUNTIMES])
    events = (
        LivenessEvent.objects.filter(runtime_id__in=runtime_ids)
        .select_related("runtime")
        .order_by("-at", "-pk")[:limit]
    )
    reasons = dict(Reason.choices)
    for event in events:
        entries.append(
            Activity(event.at, "ledger", event.get_source_display(),
                     f"{event.from_class or 'start'} → {event.to_class}: {reasons.get(event.reason, event.reason)}",
                     event.message, event.runtime, {"to_class": event.to_class})
        )  # fmt: skip
    entries.sort(key=lambda entry: entry.at, reverse=True)
    return entries[:limit]


# Usage figures a run reports (turns, tokens, cost), shown where the Runtime model has them.
USAGE_FIELDS = (
    ("turns", "turns"),
    ("input_tokens", "input tokens"),
    ("output_tokens", "output tokens"),
    ("cached_tokens", "cached tokens"),
    ("cost_usd", "cost (USD)"),
)


def usage_of(runtime):
    """[(label, value)] of the usage figures known for this run (unknown ones are left out). Pure."""
    return [(label, getattr(runtime, name)) for name, label in USAGE_FIELDS if getattr(runtime, name, None) is not None]
