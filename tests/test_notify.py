"""Notifications end to end on the sync path: real tmux, the real ledger, Apprise posting to a real
local `json://` receiver (an http.server in a thread), and a closed port as a dead channel."""

import itertools
import json
from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from runtimes import ledger
from runtimes.models import AttentionEpisode, Delivery, LivenessEvent, NotificationChannel, Runtime, RuntimeClass
from runtimes.notify import service
from runtimes.reconcile import reconcile
from runtimes.runs import controller
from tests.conftest import make_runtime, make_ticket, start_session, wait_for
from tests.notify_helpers import closed_port, notify_settings
from tickets.models import Ticket

pytestmark = pytest.mark.django_db


def missing_runtime(**fields):
    fields.setdefault("runtime_class", RuntimeClass.TMUX_MISSING)
    fields.setdefault("class_reason", "session-missing")
    fields.setdefault("class_message", "tmux session or pane not found")
    return make_runtime(**fields)


def test_a_worker_that_dies_notifies_once_per_episode_and_once_more_when_recovered(
    tmux, tmux_socket, receiver, sync_tasks, settings, django_capture_on_commit_callbacks
):
    notify_settings(settings, receiver.url)
    start_session(tmux, "cr-dies", "sleep", "60")
    ticket = make_ticket(title="Fix the flaky build")
    runtime = make_runtime(ticket=ticket, tmux_socket=tmux_socket, tmux_target="cr-dies", provider="claude")
    reconcile()
    assert receiver.posts == []  # alive: nothing to tell

    tmux.cmd("kill-session", "-t", "cr-dies")
    reconcile()
    assert wait_for(lambda: len(receiver.posts) == 1)
    post = receiver.posts[0]
    assert post["title"] == f"[Control Room] needs attention: {ticket.key} {runtime.handle}"
    for words in (
        f"{ticket.key} — Fix the flaky build",
        f"worker: {runtime.handle} on test-host (claude)",
        "class: tmux-missing — session missing",
        "message: tmux session or pane not found",
        "since: ",
        f"open: https://cr.example/admin/runtimes/runtime/{runtime.pk}/change/",
    ):
        assert words in post["message"]

    reconcile()
    reconcile()
    assert len(receiver.posts) == 1  # no repeat while the episode lasts

    runtime.refresh_from_db()
    with django_capture_on_commit_callbacks(execute=True):
        controller.recover_runtime(runtime, by="alice")
    assert wait_for(lambda: len(receiver.posts) == 2)
    assert receiver.titles()[1] == f"[Control Room] resolved: {ticket.key} {runtime.handle}"
    assert "now: completed-by-controller (controller complete)" in receiver.posts[1]["message"]
    reconcile()
    assert len(receiver.posts) == 2
    episode = AttentionEpisode.objects.get()
    assert (episode.state, episode.runtime_class, episode.end_class) == (
        "closed",
        "tmux-missing",
        "completed-by-controller",
    )
    assert list(Delivery.objects.order_by("pk").values_list("kind", "status", "attempts")) == [
        ("opened", "sent", 1),
        ("resolved", "sent", 1),
    ]


def test_the_ledger_hook_runs_only_after_the_transaction_commits(settings, django_capture_on_commit_callbacks):
    notify_settings(settings)
    runtime = make_runtime(runtime_class=RuntimeClass.TMUX_LIVE)
    transition = ledger.Transition(runtime, RuntimeClass.TMUX_MISSING, "session-missing", "gone", "reconciler")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        ledger.apply([transition], timezone.now(), "test-host")
    assert not AttentionEpisode.objects.exists()  # nothing inside the ledger's transaction
    for callback in callbacks:
        callback()
    assert AttentionEpisode.objects.get().state == "open"


def test_a_dead_channel_records_a_failed_delivery_and_the_other_channel_still_gets_it(receiver, sync_tasks, settings):
    dead = f"json://127.0.0.1:{closed_port()}/hook"
    notify_settings(settings, dead, receiver.url, NOTIFY_ATTEMPTS=2)
    missing_runtime()
    now = timezone.now()
    service.after_pass(now)

    assert len(receiver.posts) == 1
    failed = Delivery.objects.get(channel_key=service.env_channel_key(dead))
    assert (failed.status, failed.attempts) == ("pending", 1)
    assert "A Connection error occurred sending JSON notification to 127.0.0.1" in failed.error
    assert now + timedelta(seconds=59) < failed.next_attempt_at <= timezone.now() + timedelta(seconds=60)

    # The retry is due a minute later: the sweep re-enqueues it, it fails again and gives up.
    with time_machine.travel(now + timedelta(seconds=90)):
        service.after_pass(timezone.now())
    failed.refresh_from_db()
    assert (failed.status, failed.attempts, failed.next_attempt_at) == ("failed", 2, None)
    assert Delivery.objects.get(channel_key=service.env_channel_key(receiver.url)).status == "sent"
    assert len(receiver.posts) == 1


def test_a_queued_delivery_is_sent_once_however_often_its_task_runs(receiver, settings):
    notify_settings(settings, receiver.url)
    missing_runtime()
    service.after_pass(timezone.now())  # not synchronous: queued for a cluster
    delivery = Delivery.objects.get()
    assert service.deliver(delivery.pk).endswith(
        f"sent to CONTROLROOM_NOTIFY_URLS #1 (json://127.0.0.1:{receiver.server.server_port}/…)"
    )
    assert service.deliver(delivery.pk) == f"delivery {delivery.pk}: nothing to do"
    assert len(receiver.posts) == 1


def test_a_delivery_claimed_by_one_worker_is_not_sent_by_another(receiver, settings):
    notify_settings(settings, receiver.url)
    missing_runtime()
    service.after_pass(timezone.now())
    delivery = Delivery.objects.get()
    now = timezone.now()
    Delivery.objects.filter(pk=delivery.pk).update(attempts=1, next_attempt_at=now + service.LEASE)
    assert "not due or taken" in service.deliver(delivery.pk, now=now)
    assert receiver.posts == []


def test_flapping_within_the_quiet_period_sends_nothing_more(receiver, sync_tasks, settings):
    notify_settings(settings, receiver.url, NOTIFY_QUIET=120)
    runtime = missing_runtime()
    start = timezone.now()
    for i, runtime_class in enumerate([RuntimeClass.TMUX_MISSING, RuntimeClass.TMUX_LIVE] * 4):
        type(runtime).objects.filter(pk=runtime.pk).update(runtime_class=runtime_class)
        service.after_pass(start + timedelta(seconds=10 * i))
    assert receiver.titles() == [f"[Control Room] needs attention: {runtime.ticket.key} {runtime.handle}"]
    assert AttentionEpisode.objects.get().flaps == 3

    service.after_pass(start + timedelta(seconds=70 + 119))
    assert len(receiver.posts) == 1  # still inside the quiet period
    service.after_pass(start + timedelta(seconds=70 + 120))
    assert receiver.titles()[1].startswith("[Control Room] resolved:")
    assert "needed attention for" in receiver.posts[1]["message"]


def test_a_new_episode_after_the_quiet_period_is_announced_again(receiver, sync_tasks, settings):
    notify_settings(settings, receiver.url, NOTIFY_QUIET=60)
    runtime = missing_runtime()
    start = timezone.now()
    service.after_pass(start)
    type(runtime).objects.filter(pk=runtime.pk).update(runtime_class=RuntimeClass.TMUX_LIVE)
    service.after_pass(start + timedelta(seconds=10))
    service.after_pass(start + timedelta(seconds=80))
    type(runtime).objects.filter(pk=runtime.pk).update(runtime_class=RuntimeClass.TMUX_MISSING)
    service.after_pass(start + timedelta(seconds=90))
    assert receiver.kinds() == ["needs attention", "resolved", "needs attention"]
    assert AttentionEpisode.objects.filter(runtime=runtime).count() == 2


def test_more_than_five_in_one_pass_go_as_one_digest(receiver, sync_tasks, settings):
    notify_settings(settings, receiver.url)
    runtimes = [missing_runtime() for _ in range(6)]
    service.after_pass(timezone.now())
    assert receiver.titles() == ["[Control Room] 6 attention changes (6 need attention)"]
    lines = receiver.posts[0]["message"].splitlines()
    assert sorted(lines) == sorted(
        f"needs attention: {r.ticket.key} {r.handle} on test-host (tmux-missing — session missing) "
        f"https://cr.example/admin/runtimes/runtime/{r.pk}/change/"
        for r in runtimes
    )
    assert Delivery.objects.get().kind == "digest"


def test_unknown_past_its_grace_period_opens_an_episode_by_time_passing(receiver, sync_tasks, settings):
    notify_settings(settings, receiver.url)
    settings.CONTROLROOM = {**settings.CONTROLROOM, "UNKNOWN_GRACE": 300}
    now = timezone.now()
    make_runtime(runtime_class=RuntimeClass.UNKNOWN, class_reason="tmux-unreachable", class_changed_at=now)
    service.after_pass(now + timedelta(seconds=299))
    assert receiver.posts == []
    service.after_pass(now + timedelta(seconds=300))
    assert len(receiver.posts) == 1
    assert "class: unknown — tmux unreachable" in receiver.posts[0]["message"]


def test_a_ticket_that_stops_expecting_a_worker_resolves_its_episode(receiver, sync_tasks, settings):
    notify_settings(settings, receiver.url)
    runtime = missing_runtime()
    service.after_pass(timezone.now())
    type(runtime.ticket).objects.filter(pk=runtime.ticket_id).update(state="done", closed_at=timezone.now())
    service.after_pass(timezone.now())
    assert receiver.kinds() == ["needs attention", "resolved"]


def test_channels_in_the_admin_apply_their_filters(receiver, sync_tasks, settings):
    notify_settings(settings)
    NotificationChannel.objects.create(name="codex only", url=receiver.url, providers="codex")
    NotificationChannel.objects.create(name="other host", url=receiver.url, hosts="elsewhere")
    NotificationChannel.objects.create(
        name="missing on test-host", url=receiver.url, hosts="test-host", classes="tmux-missing"
    )
    NotificationChannel.objects.create(name="disabled", url=receiver.url, enabled=False)
    missing_runtime(provider="claude")
    service.after_pass(timezone.now())
    assert list(Delivery.objects.values_list("target", flat=True)) == [
        f"missing on test-host (json://127.0.0.1:{receiver.server.server_port}/…)"
    ]
    assert len(receiver.posts) == 1


def test_a_budget_warning_goes_to_every_channel_once_per_key(receiver, sync_tasks, settings):
    notify_settings(settings, receiver.url)
    first = service.budget_warning("budget:profile:opus:2026-11-26", "80% of the daily budget", "spent $8.00 of $10.00")
    again = service.budget_warning("budget:profile:opus:2026-11-26", "80% of the daily budget", "spent $8.10 of $10.00")
    assert [d.kind for d in first] == ["budget-warning"] and again == []
    assert receiver.titles() == ["[Control Room] 80% of the daily budget"]
    assert receiver.posts[0]["message"] == "spent $8.00 of $10.00"


def test_a_broken_notification_step_never_stops_the_reconciler(monkeypatch, settings, caplog):
    notify_settings(settings)

    def broken(now):
        raise RuntimeError("notifications are down")

    monkeypatch.setattr(service, "rows_for_pass", broken)
    make_runtime(kind="websocket", handle="ws:1", last_activity_at=timezone.now())
    summary = reconcile()
    assert summary.runtimes == 1 and summary.errors == 0
    assert "notification step failed" in caplog.text


def test_secrets_in_a_dead_channel_url_never_reach_errors_logs_or_the_ledger(sync_tasks, settings, caplog):
    caplog.set_level("DEBUG")
    secret_url = f"json://bot:Sup3rS3cretPassw0rd@127.0.0.1:{closed_port()}/hooks/T0KEN0123456789?auth=Q9Q9Q9Q9"
    notify_settings(settings, secret_url)
    NotificationChannel.objects.create(name="ops", url=secret_url.replace("T0KEN", "TOKEN"))
    runtime = missing_runtime()
    service.after_pass(timezone.now())
    assert Delivery.objects.filter(status="pending", attempts=1).count() == 2
    stored = [
        *Delivery.objects.values_list("target", "error", "title", "body", "channel_key"),
        *LivenessEvent.objects.values_list("message", "observed"),
        *AttentionEpisode.objects.values_list("message"),
        (caplog.text, runtime.ticket.failure_reason),
    ]
    text = json.dumps(stored, default=str)
    assert "Connection error" in text
    for secret in ("Sup3rS3cretPassw0rd", "0123456789", "Q9Q9Q9Q9"):
        assert secret not in text


def test_the_python_attention_rule_agrees_with_the_sql_one_on_every_kind_of_row():
    """The notification step and the API judge attention in Python (observe.stored_attention); the
    admin, the console and the pass filter with Runtime.needs_attention_q. Both on one grid."""
    now = timezone.now()
    tickets = [
        make_ticket(state=Ticket.State.IN_PROGRESS),
        make_ticket(state=Ticket.State.REVIEW),
        make_ticket(state=Ticket.State.WAITING),
        make_ticket(state=Ticket.State.IN_PROGRESS, kind=Ticket.Kind.UMBRELLA),
    ]
    grid = itertools.product(
        tickets,
        RuntimeClass.values,
        ("", "permission-prompt", "elicitation-dialog", "idle-prompt"),
        ("", "failed", "completed"),
        (timedelta(0), timedelta(seconds=299), timedelta(seconds=301), timedelta(hours=2)),  # time in class
        (None, timedelta(minutes=-11), timedelta(minutes=-9), timedelta(minutes=5)),  # resumes_at - now
    )
    rows = [
        Runtime(
            ticket=ticket, kind=Runtime.Kind.TMUX, handle=f"tmux:grid-{i}",
            tmux_target=f"grid-{i}", host="test-host",
            runtime_class=runtime_class, class_reason=reason, exit_outcome=outcome, class_changed_at=now - age,
            resumes_at=None if resumes is None else now + resumes,
        )
        for i, (ticket, runtime_class, reason, outcome, age, resumes) in enumerate(grid)
    ]  # fmt: skip
    ids = [runtime.pk for runtime in Runtime.objects.bulk_create(rows)]
    by_sql = set(Runtime.objects.needs_attention(now).values_list("pk", flat=True))
    by_python = {pk for pk, row in service.attention_rows(ids, now).items() if row["attention"]}
    assert by_python == by_sql
    assert 0 < len(by_sql) < len(ids)
