"""Attention episodes → deliveries. Reads the attention state, writes episodes by compare-and-set
(so two hosts evaluating at once announce each change once), creates Delivery rows and hands them
to django-q2. Never called inside the ledger's transaction: the ledger calls `after_transitions`
on commit, and each reconcile pass calls `after_pass`.
"""

import hashlib
import logging
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.urls import reverse
from django.utils import timezone

from runtimes import observe, plainsql
from runtimes.models import FINAL_CLASSES, Reason, Runtime, RuntimeClass
from runtimes.notify import episodes
from runtimes.notify.models import AttentionEpisode, Delivery, NotificationChannel
from runtimes.text import safe_text
from tickets.models import Ticket

logger = logging.getLogger(__name__)

DELIVER_TASK = "runtimes.notify.tasks.deliver"
# A claimed delivery is not attempted again for this long (a worker is sending it).
LEASE = timedelta(minutes=5)
MESSAGE_CHARS = 500
UNSETTLED_CLASSES = tuple(c for c in RuntimeClass.values if c not in FINAL_CLASSES)
RUNTIME_FIELDS = (
    "ticket__key", "ticket__title", "handle", "host", "provider", "profile", "runtime_class", "class_reason",
    "class_message", "class_changed_at",
)  # fmt: skip


# --- channels -----------------------------------------------------------------------------------


def env_channel_key(url):
    """The identity of a CONTROLROOM_NOTIFY_URLS entry: a hash, so the URL itself is never stored."""
    return "env:" + hashlib.sha256(url.strip().encode()).hexdigest()[:32]


def routes():
    """Every channel a notice may go to: the environment's URLs, then the enabled admin channels
    (one query)."""
    env = [
        episodes.Route(env_channel_key(url), f"CONTROLROOM_NOTIFY_URLS #{i} ({episodes.redact_url(url)})")
        for i, url in enumerate(settings.CONTROLROOM["NOTIFY_URLS"], start=1)
    ]
    return env + [channel.route() for channel in NotificationChannel.objects.filter(enabled=True)]


def url_for(channel_key):
    """The secret URL behind a channel key, or None when that channel is gone (one query for db:)."""
    kind, _, ident = channel_key.partition(":")
    if kind == "env":
        return next((u for u in settings.CONTROLROOM["NOTIFY_URLS"] if env_channel_key(u) == channel_key), None)
    if kind == "db" and ident.isdigit():
        return NotificationChannel.objects.filter(pk=int(ident)).values_list("url", flat=True).first()
    return None


# --- reading the attention state ------------------------------------------------------------------


ROW_FIELDS = (
    "pk", "exit_outcome", "resumes_at", "ticket__state", "ticket__kind", *RUNTIME_FIELDS,
)  # fmt: skip
ROWS_READ = plainsql.Read(Runtime, ROW_FIELDS)
UNFINISHED_READ = plainsql.Read(
    AttentionEpisode, ("runtime_id", "pk", "state", "closed_at"), key="runtime_id",
    exclude=(("state", AttentionEpisode.State.CLOSED),),
)  # fmt: skip


def attention_rows(runtime_ids, now):
    """The attention state of these runtimes, by id: their fields, whether they need attention and
    are settled, and their unfinished episode. Two plain indexed queries; the attention rule is the
    classifier's (runtimes.observe.stored_attention, which a test holds equal to
    Runtime.needs_attention_q), so no per-call SQL of that rule is compiled."""
    rows = {values[0]: dict(zip(ROW_FIELDS, values, strict=True)) for values in plainsql.read(ROWS_READ, runtime_ids)}
    episodes_of = {runtime_id: episode for runtime_id, *episode in plainsql.read(UNFINISHED_READ, rows)}
    policy = observe.policy_from_settings()
    for pk, row in rows.items():
        expects_worker = Ticket.worker_expected(row["ticket__state"], row["ticket__kind"])
        row["attention"] = observe.stored_attention(row, expects_worker, now, policy)
        row["settled"] = row["runtime_class"] in FINAL_CLASSES or not expects_worker
        row["episode_id"], row["episode_state"], row["episode_closed_at"] = episodes_of.get(pk, (None, None, None))
    return rows


def _subject(row):
    return episodes.Subject(
        runtime_id=row["pk"],
        attention=bool(row["attention"]),
        settled=bool(row["settled"]),
        episode_id=row["episode_id"],
        episode_state=row["episode_state"],
        closed_at=row["episode_closed_at"],
    )


def rows_for_pass(now):
    """Runtimes whose episode may change by time passing or by their ticket: unsettled runtimes
    that need attention, and every runtime with an unfinished episode (one UNION of two selects,
    both on partial indexes), then their attention_rows (none when there are none)."""
    unfinished = AttentionEpisode.objects.exclude(state=AttentionEpisode.State.CLOSED).values("runtime_id")
    # Unsettled runtimes by a positive class list inside a subquery: the database walks the class
    # index over unsettled classes only, never the settled history the attention rule also names.
    unsettled = Runtime.objects.filter(runtime_class__in=UNSETTLED_CLASSES).values("pk")
    entering = Runtime.objects.filter(pk__in=unsettled).filter(Runtime.needs_attention_q(now))
    ids = entering.values_list("pk").order_by().union(unfinished.values_list("runtime_id").order_by())
    return attention_rows([pk for (pk,) in ids], now)


# --- writing episodes -----------------------------------------------------------------------------


def _apply(step, row, now):
    """Write one announcing step (a start, a resolve) by compare-and-set; return the episode when
    this caller won it and must announce."""
    State = AttentionEpisode.State
    if step.action == episodes.START:
        try:
            with transaction.atomic():
                return AttentionEpisode.objects.create(
                    runtime_id=row["pk"],
                    opened_at=now,
                    runtime_class=row["runtime_class"],
                    reason=row["class_reason"],
                    message=safe_text(row["class_message"], MESSAGE_CHARS),
                )
        except IntegrityError:  # another evaluator opened it first
            return None
    current = AttentionEpisode.objects.filter(pk=step.episode_id, state=step.from_state)
    closed_at = now if step.from_state == State.OPEN else F("closed_at")
    if current.update(state=State.CLOSED, closed_at=closed_at, resolved_at=now, end_class=row["runtime_class"]):
        return AttentionEpisode.objects.get(pk=step.episode_id)
    return None


def _apply_silent(steps, rows, now):
    """Write the steps that announce nothing (a flap back within the quiet period, an end held
    back) by compare-and-set, one UPDATE per kind of change rather than one per episode."""
    State = AttentionEpisode.State
    groups = {}
    for step in steps:
        end_class = rows[step.runtime_id]["runtime_class"] if step.action == episodes.HOLD else ""
        groups.setdefault((step.action, step.from_state, end_class), []).append(step.episode_id)
    for (action, from_state, end_class), episode_ids in groups.items():
        unchanged = {"state": from_state}
        if action == episodes.REOPEN:
            changes = {"state": State.OPEN, "closed_at": None, "end_class": ""}
            plainsql.update(AttentionEpisode, episode_ids, changes, where=unchanged, increments={"flaps": 1})
        else:
            changes = {"state": State.CLOSING, "closed_at": now, "end_class": end_class}
            plainsql.update(AttentionEpisode, episode_ids, changes, where=unchanged)


def evaluate(rows, now):
    """Bring the episodes of `rows` in line with their attention state and queue the notices.
    Returns the deliveries created."""
    steps = episodes.plan([_subject(row) for row in rows.values()], now, settings.CONTROLROOM["NOTIFY_QUIET"])
    _apply_silent([step for step in steps if not step.announces], rows, now)
    notices = []
    for step in (step for step in steps if step.announces):
        episode = _apply(step, rows[step.runtime_id], now)
        if episode is not None:
            notices.append(notice_for(episode, rows[step.runtime_id], now))
    return queue(notices, now)


# --- the words ------------------------------------------------------------------------------------


def _reason_words(reason):
    return Reason(reason).label if reason in Reason.values else reason


def _duration(seconds):
    minutes = int(seconds // 60)
    if minutes < 1:
        return f"{int(seconds)} s"
    if minutes < 120:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min"


def runtime_link(runtime_id):
    path = reverse("admin:runtimes_runtime_change", args=[runtime_id])
    return f"{settings.CONTROLROOM['PUBLIC_URL']}{path}"


def notice_for(episode, row, now):
    """The opened or resolved notice of one episode (text only: bounded, redacted)."""
    who = f"{row['ticket__key']} {row['handle']}"
    link = runtime_link(row["pk"])
    since = row["class_changed_at"]
    common = {
        "runtime_id": row["pk"],
        "episode_id": episode.pk,
        "host": row["host"],
        "provider": row["provider"],
        "runtime_class": episode.runtime_class,
    }
    if episode.state == AttentionEpisode.State.OPEN:
        reason = _reason_words(row["class_reason"])
        body = "\n".join(
            [
                f"{row['ticket__key']} — {row['ticket__title']}",
                f"worker: {row['handle']} on {row['host'] or 'an unnamed host'} ({row['provider']}"
                + (f", profile {row['profile']}" if row["profile"] else "")
                + ")",
                f"class: {row['runtime_class']} — {reason}",
                f"message: {safe_text(row['class_message'], MESSAGE_CHARS) or '—'}",
                f"since: {since:%Y-%m-%d %H:%M:%S} UTC ({_duration((now - since).total_seconds())} ago)",
                f"open: {link}",
            ]
        )
        line = f"needs attention: {who} on {row['host']} ({row['runtime_class']} — {reason}) {link}"
        return episodes.Notice("opened", f"[Control Room] needs attention: {who}", body, line, **common)
    lasted = _duration((episode.closed_at - episode.opened_at).total_seconds())
    now_is = f"{row['runtime_class']} ({_reason_words(row['class_reason'])})"
    body = "\n".join(
        [
            f"{row['ticket__key']} — {row['ticket__title']}",
            f"worker: {row['handle']} on {row['host'] or 'an unnamed host'}",
            f"now: {now_is}",
            f"needed attention for {lasted} ({episode.runtime_class} since {episode.opened_at:%Y-%m-%d %H:%M:%S} UTC)",
            f"open: {link}",
        ]
    )
    line = f"resolved: {who} on {row['host']}, now {now_is} {link}"
    return episodes.Notice("resolved", f"[Control Room] resolved: {who}", body, line, **common)


# --- deliveries -----------------------------------------------------------------------------------


def queue(notices, now, key=""):
    """Create the deliveries of these notices for every matching channel and enqueue them."""
    if not notices:
        return []
    outgoing = episodes.route_notices(notices, routes(), settings.CONTROLROOM["NOTIFY_DIGEST_OVER"])
    deliveries = create(outgoing, key)
    enqueue([d.pk for d in deliveries])
    return deliveries


def create(outgoing, key=""):
    """One pending Delivery row per outgoing message. With a `key`, a channel that already has a
    delivery of that key gets none (deduplicated by the database)."""
    now = timezone.now()  # deliveries keep the wall clock, whatever moment the episodes were judged at
    deliveries = [
        Delivery(
            channel_id=int(o.route.key[3:]) if o.route.key.startswith("db:") else None,
            channel_key=o.route.key,
            target=o.route.label[:255],
            runtime_id=o.notice.runtime_id if o.notice else None,
            episode_id=o.notice.episode_id if o.notice else None,
            kind=o.kind,
            key=key,
            title=o.title[:255],
            body=o.body,
            next_attempt_at=now,
            created_at=now,
            updated_at=now,
        )
        for o in outgoing
    ]
    if not key:
        return Delivery.objects.bulk_create(deliveries)
    created = []
    for delivery in deliveries:
        try:
            with transaction.atomic():
                delivery.save()
            created.append(delivery)
        except IntegrityError:
            continue
    return created


def enqueue(delivery_ids):
    """Hand deliveries to django-q2. A broker failure only delays them: the next pass re-enqueues."""
    from django_q.tasks import async_task

    for pk in delivery_ids:
        try:
            async_task(DELIVER_TASK, pk, task_name=f"notify-{pk}", group="notifications")
        except Exception:
            logger.exception("cannot enqueue delivery %s; the next pass retries", pk)


def sweep(now):
    """Enqueue pending deliveries whose attempt is due (a retry, or an enqueue that was lost)."""
    due = list(
        Delivery.objects.filter(status=Delivery.Status.PENDING, next_attempt_at__lt=now).values_list("pk", flat=True)
    )
    enqueue(due)
    return len(due)


def backoff(attempts):
    """Seconds before attempt `attempts + 1`: 1, 2, 4, 8 … minutes, at most an hour."""
    return min(60 * 2 ** max(attempts - 1, 0), 3600)


def deliver(delivery_id, now=None):
    """Attempt one delivery (the django-q2 task). Claims it first, so it is sent at most once at a
    time; returns a short summary."""
    from runtimes.notify import transport

    now = now or timezone.now()
    row = Delivery.objects.filter(pk=delivery_id).values("status", "attempts", "channel_key").first()
    if row is None or row["status"] != Delivery.Status.PENDING:
        return f"delivery {delivery_id}: nothing to do"
    claimed = Delivery.objects.filter(
        pk=delivery_id, status=Delivery.Status.PENDING, attempts=row["attempts"], next_attempt_at__lte=now
    ).update(attempts=row["attempts"] + 1, next_attempt_at=now + LEASE, updated_at=now)
    if not claimed:
        return f"delivery {delivery_id}: not due or taken by another worker"
    delivery = Delivery.objects.get(pk=delivery_id)
    url = url_for(delivery.channel_key)
    try:
        if url is None:
            raise transport.DeliveryError("the channel no longer exists")
        transport.send(url, delivery.title, delivery.body)
    except Exception as error:
        message = str(error) if isinstance(error, transport.DeliveryError) else type(error).__name__
        if url and not isinstance(error, transport.DeliveryError):
            message = f"{type(error).__name__}: {episodes.scrub(str(error), url)}"
        retry = url is not None and delivery.kind != Delivery.Kind.TEST  # a test reports its first failure
        return _failed(delivery, safe_text(message, transport.ERROR_CHARS), retry)
    Delivery.objects.filter(pk=delivery_id).update(
        status=Delivery.Status.SENT, sent_at=timezone.now(), next_attempt_at=None, error="", updated_at=timezone.now()
    )
    return f"delivery {delivery_id}: sent to {delivery.target}"


def _failed(delivery, message, retry):
    now = timezone.now()
    final = not retry or delivery.attempts >= settings.CONTROLROOM["NOTIFY_ATTEMPTS"]
    Delivery.objects.filter(pk=delivery.pk).update(
        status=Delivery.Status.FAILED if final else Delivery.Status.PENDING,
        next_attempt_at=None if final else now + timedelta(seconds=backoff(delivery.attempts)),
        error=message,
        updated_at=now,
    )
    logger.warning(
        "delivery %s to %s failed (attempt %s): %s", delivery.pk, delivery.target, delivery.attempts, message
    )
    return f"delivery {delivery.pk}: {'failed' if final else 'will retry'}: {message}"


# --- entry points ---------------------------------------------------------------------------------


def after_pass(now):
    """The notification step of a reconcile pass: episodes that time or tickets changed, then
    retries that are due. Never raises: a broken notification never stops the reconciler."""
    try:
        created = evaluate(rows_for_pass(now), now)
        return len(created), sweep(now)
    except Exception:
        logger.exception("notification step failed; the next pass tries again")
        return 0, 0


def after_transitions(runtime_ids, now):
    """Called once the ledger has committed transitions: their episodes open or close at once."""
    try:
        evaluate(attention_rows(runtime_ids, now), now)
    except Exception:
        logger.exception("notification step after transitions failed; the next pass tries again")


def send_test(test_routes, sync=False):
    """One test notice to each of these channels (whatever their filters), queued for the cluster
    or, with `sync`, sent now in this process. Returns the deliveries."""
    outgoing = [
        episodes.Outgoing(
            route,
            Delivery.Kind.TEST,
            "[Control Room] test notification",
            f"This channel, {route.label}, receives Control Room's attention notices.",
        )
        for route in test_routes
    ]
    deliveries = create(outgoing)
    if not sync:
        enqueue([d.pk for d in deliveries])
        return deliveries
    for delivery in deliveries:
        deliver(delivery.pk)
    return list(Delivery.objects.filter(pk__in=[d.pk for d in deliveries]).order_by("pk"))


def budget_warning(key, title, body, now=None):
    """The budget hook: tell every channel once per `key` (e.g. "budget:profile:opus:2026-11-26").
    Returns the deliveries created (none when this key was already sent)."""
    now = now or timezone.now()
    notice = episodes.Notice("budget-warning", f"[Control Room] {title}"[:255], body, title)
    return queue([notice], now, key=key)
