from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from runtimes.intake.activity import record_activity
from runtimes.reconcile import reconcile
from tests.conftest import make_runtime

pytestmark = pytest.mark.django_db


def console(**fields):
    return make_runtime(kind="websocket", handle="ws:console-5", **fields)


def test_activity_wakes_an_idle_console_at_once_with_a_heartbeat_event():
    idle = console(runtime_class="websocket-idle", last_activity_at=timezone.now() - timedelta(hours=1))
    call_command("record_activity", idle.handle)
    idle.refresh_from_db()
    assert idle.runtime_class == "websocket-active"
    event = idle.events.get()
    assert (event.source, event.from_class, event.to_class) == ("heartbeat", "websocket-idle", "websocket-active")


def test_an_older_report_never_overwrites_a_newer_one():
    now = timezone.now()
    runtime = console(runtime_class="websocket-active", last_activity_at=now)
    assert record_activity(runtime, now - timedelta(minutes=10), now) is False
    runtime.refresh_from_db()
    assert runtime.last_activity_at == now and not runtime.events.exists()


def test_a_report_from_the_future_counts_as_now_and_the_reconciler_still_decides():
    now = timezone.now()
    runtime = console(runtime_class="websocket-active")
    record_activity(runtime, now + timedelta(days=1), now)
    runtime.refresh_from_db()
    assert runtime.last_activity_at == now
    reconcile(now=now + timedelta(hours=1))  # no report since: idle again
    runtime.refresh_from_db()
    assert runtime.runtime_class == "websocket-idle"


def test_only_consoles_report_activity():
    worker = make_runtime(runtime_class="tmux-live")
    with pytest.raises(CommandError, match="liveness is probed, not reported"):
        call_command("record_activity", worker.handle)
    worker.refresh_from_db()
    assert worker.last_activity_at is None


@pytest.mark.parametrize("at, message", [("yesterday", "not an ISO 8601 time"), ("2026-11-24T10:00", "no time zone")])
def test_a_malformed_time_is_a_clear_error(at, message):
    runtime = console()
    with pytest.raises(CommandError, match=message):
        call_command("record_activity", runtime.handle, "--at", at)
