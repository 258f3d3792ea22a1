"""Usage limits read from the output: which texts and events are limits, and when they reset."""

import json
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import call_command

from runtimes.models import ReconcilerHeartbeat, Runtime
from runtimes.reconcile import reconcile
from runtimes.runs.harvest import exit_transition
from runtimes.runs.outcomes import UsageLimit, classify_claude, classify_codex, limit_resets_at
from tests.conftest import make_runtime
from tests.test_harvest import run_worker
from tests.test_outcomes import claude_result, codex, stream
from tickets.models import Ticket

LIMIT = claude_result("success", True, "You've hit your session limit · resets 3pm", terminal_reason="completed")
REJECTED = {
    "type": "rate_limit_event",
    "rate_limit_info": {"status": "rejected", "resetsAt": 1795705200, "rateLimitType": "five_hour"},
}
CODEX_LIMIT = (
    "You’ve hit your usage limit. Upgrade to Pro (https://chatgpt.com/explore/pro), visit "
    "https://chatgpt.com/codex/settings/usage to purchase more credits or try again at 6:39 AM."
)


@pytest.mark.parametrize(
    "text, kind, reset",
    [
        ("You've hit your session limit · resets 3pm", "session", "3pm"),
        ("You've hit your weekly limit · resets Dec 1, 9am", "weekly", "Dec 1, 9am"),
        ("You've hit your Opus limit · resets 11:30pm", "opus", "11:30pm"),
        ("You’ve hit your Sonnet limit · resets 6am", "sonnet", "6am"),
        ("You've hit your limit · resets 1pm (Europe/Lisbon)", "usage", "1pm (Europe/Lisbon)"),
        ("You've hit your session limit", "session", ""),
    ],
)
def test_claude_limit_texts_pause_the_run_instead_of_failing_it(text, kind, reset):
    outcome = classify_claude(json.dumps(claude_result("success", True, text)))
    assert (outcome.exit_outcome, outcome.reason, outcome.paused) == ("", "usage-limit", True)
    assert (outcome.limit.kind, outcome.limit.reset_text, outcome.limit.resets_at) == (kind, reset, None)
    assert outcome.message == text


def test_a_rejected_rate_limit_event_gives_the_exact_reset_with_the_result_text():
    outcome = classify_claude(stream(REJECTED, LIMIT))
    assert outcome.reason == "usage-limit"
    assert (outcome.limit.kind, outcome.limit.resets_at, outcome.limit.reset_text) == ("session", 1795705200, "3pm")


def test_a_rejected_rate_limit_event_alone_is_a_usage_limit_even_if_the_stream_is_cut():
    outcome = classify_claude(stream(REJECTED))
    assert (outcome.reason, outcome.limit.kind, outcome.limit.resets_at) == ("usage-limit", "five_hour", 1795705200)


def test_a_stop_failure_rate_limit_in_the_output_is_a_usage_limit_without_a_reset():
    hook = {"type": "system", "subtype": "hook_response", "hook_event_name": "StopFailure", "error": "rate_limit"}
    outcome = classify_claude(stream(hook, claude_result("success", True, "API Error: Request rejected (429)")))
    assert (outcome.reason, outcome.limit.kind, outcome.limit.resets_at) == ("usage-limit", "rate_limit", None)


def test_an_allowed_warning_rate_limit_event_does_not_stop_a_finished_run():
    warning = {"type": "rate_limit_event", "rate_limit_info": {"status": "allowed_warning", "resetsAt": 1}}
    outcome = classify_claude(stream(warning, claude_result(result="DONE: shipped")))
    assert (outcome.exit_outcome, outcome.reason, outcome.limit) == ("completed", "completed", None)


def test_a_server_rate_limit_without_a_limit_signal_is_still_a_rate_limited_failure():
    outcome = classify_claude(json.dumps(claude_result("success", True, "API Error: Rate limit reached")))
    assert (outcome.exit_outcome, outcome.reason) == ("failed", "rate-limited")


def test_codex_usage_limit_with_curly_apostrophe_keeps_the_local_reset_text_and_thread():
    output = codex(
        {"type": "thread.started", "thread_id": "th-9"},
        {"type": "turn.started"},
        {"type": "error", "message": CODEX_LIMIT},
        {"type": "turn.failed", "error": {"message": CODEX_LIMIT}},
    )
    outcome = classify_codex(output)
    assert (outcome.exit_outcome, outcome.reason, outcome.usage.session_id) == ("", "usage-limit", "th-9")
    assert (outcome.limit.kind, outcome.limit.reset_text) == ("usage", "6:39 AM")


def test_codex_usage_limit_in_an_error_event_of_a_cut_stream_is_a_usage_limit():
    long_form = CODEX_LIMIT.replace("6:39 AM", "Nov 27, 2026 6:39 AM")
    outcome = classify_codex(codex({"type": "turn.started"}, {"type": "error", "message": long_form}))
    assert (outcome.reason, outcome.limit.reset_text) == ("usage-limit", "Nov 27, 2026 6:39 AM")


NOW = datetime(2026, 11, 26, 5, 0, tzinfo=UTC)  # 21:00 on Nov 25 in Los Angeles, 14:00 on Nov 26 in Tokyo


@pytest.mark.parametrize(
    "text, zone, expected",
    [
        # Los Angeles (UTC-8), 21:00 local: 11:30 PM is still today (before midnight)...
        ("11:30 PM", "America/Los_Angeles", datetime(2026, 11, 26, 7, 30, tzinfo=UTC)),
        # ...and 6:39 AM has passed today, so it is tomorrow morning (after midnight).
        ("6:39 AM", "America/Los_Angeles", datetime(2026, 11, 26, 14, 39, tzinfo=UTC)),
        # Tokyo (UTC+9), 14:00 local: 6:39 AM is tomorrow, 3pm is today.
        ("6:39 AM", "Asia/Tokyo", datetime(2026, 11, 26, 21, 39, tzinfo=UTC)),
        ("3pm", "Asia/Tokyo", datetime(2026, 11, 26, 6, 0, tzinfo=UTC)),
        ("12am", "UTC", datetime(2026, 11, 27, 0, 0, tzinfo=UTC)),
        ("12:15pm", "UTC", datetime(2026, 11, 26, 12, 15, tzinfo=UTC)),
        # A zone in the text wins over the host's.
        ("1pm (Europe/Lisbon)", "Asia/Tokyo", datetime(2026, 11, 26, 13, 0, tzinfo=UTC)),
        # Codex's dated form and Claude's weekly form.
        ("Nov 27, 2026 6:39 AM", "America/Los_Angeles", datetime(2026, 11, 27, 14, 39, tzinfo=UTC)),
        ("Dec 1, 9am", "UTC", datetime(2026, 12, 1, 9, 0, tzinfo=UTC)),
    ],
)
def test_reset_clock_text_is_local_time_on_the_worker_host_and_a_past_time_means_the_next_day(text, zone, expected):
    assert limit_resets_at(UsageLimit(reset_text=text), NOW, zone) == expected


def test_an_epoch_reset_wins_and_milliseconds_are_understood():
    expected = datetime(2026, 11, 26, 15, 0, tzinfo=UTC)
    assert limit_resets_at(UsageLimit(resets_at=1795705200, reset_text="9am"), NOW, "Asia/Tokyo") == expected
    assert limit_resets_at(UsageLimit(resets_at=1795705200000), NOW) == expected


@pytest.mark.parametrize("text", ["", "soon", "25pm", "13:00", "3:75pm", "Feb 30, 9am", "9am (Not/AZone)"])
def test_an_unreadable_reset_is_unknown_or_uses_the_host_zone(text):
    result = limit_resets_at(UsageLimit(reset_text=text), NOW, "UTC")
    assert result is None or (text.endswith("(Not/AZone)") and result == datetime(2026, 11, 26, 9, 0, tzinfo=UTC))


# Real runs of the fake CLIs in tmux, harvested by the reconciler.

AT_0500 = datetime(2026, 11, 26, 5, 0, tzinfo=UTC)


def started_before(runtime, moment):
    """The run started before the pass's `now` (a start in the future would be clock skew)."""
    earlier = moment - timedelta(minutes=5)
    Runtime.objects.filter(pk=runtime.pk).update(started_at=earlier, class_changed_at=earlier)
    runtime.refresh_from_db()
    return runtime


@pytest.mark.django_db
def test_a_claude_session_limit_pauses_the_run_until_resets_at_with_a_ticket_note_and_no_banner(
    tmux, tmux_socket, fake_bin, tmp_path, settings
):
    settings.CONTROLROOM = {**settings.CONTROLROOM, "HOST_TIME_ZONE": "Europe/Lisbon"}
    runtime = started_before(run_worker(tmux, tmux_socket, fake_bin, tmp_path, "claude-session-limit"), AT_0500)
    reconcile(now=AT_0500)
    runtime.refresh_from_db()
    assert (runtime.runtime_class, runtime.class_reason, runtime.exit_outcome) == ("usage-limited", "usage-limit", "")
    assert runtime.resumes_at == datetime(2026, 11, 26, 15, 0, tzinfo=UTC)  # resetsAt, not the text
    assert (runtime.agent_session_id, runtime.turns, runtime.exit_code) == ("0b7f3a52-sess-1", 2, 1)
    ticket = Ticket.objects.get(pk=runtime.ticket_id)
    assert (ticket.note, ticket.failure_reason, ticket.state) == ("paused until 15:00 (usage limit)", "", "in_progress")
    event = runtime.events.get()
    assert (event.to_class, event.reason, event.observed["host_time_zone"]) == (
        "usage-limited",
        "usage-limit",
        "Europe/Lisbon",
    )
    assert not Runtime.objects.needs_attention().filter(pk=runtime.pk).exists()
    reconcile(now=AT_0500)  # a paused run stays paused: no new ledger row
    assert runtime.events.count() == 1


@pytest.mark.django_db
def test_a_codex_usage_limit_resets_at_the_local_clock_time_of_the_worker_host(
    tmux, tmux_socket, fake_bin, tmp_path, settings
):
    settings.CONTROLROOM = {**settings.CONTROLROOM, "HOST_TIME_ZONE": "America/Los_Angeles"}
    runtime = started_before(run_worker(tmux, tmux_socket, fake_bin, tmp_path, "gpt-limit", provider="codex"), AT_0500)
    reconcile(now=AT_0500)  # 21:00 the evening before, in Los Angeles
    runtime.refresh_from_db()
    assert (runtime.runtime_class, runtime.agent_session_id) == ("usage-limited", "019a6c1e-th-1")
    assert runtime.resumes_at == datetime(2026, 11, 26, 14, 39, tzinfo=UTC)  # 6:39 AM in Los Angeles
    assert Ticket.objects.get(pk=runtime.ticket_id).note == "paused until 06:39 (usage limit)"


@pytest.mark.django_db
def test_harvest_of_a_weekly_limit_uses_the_time_zone_the_host_reported_in_its_heartbeat(
    tmux, tmux_socket, fake_bin, tmp_path, capsys
):
    runtime = run_worker(tmux, tmux_socket, fake_bin, tmp_path, "claude-weekly-limit")
    Runtime.objects.filter(pk=runtime.pk).update(host="tokyo-1")
    ReconcilerHeartbeat.objects.create(host="tokyo-1", finished_at=AT_0500, time_zone="Asia/Tokyo")
    call_command("harvest_runtime", runtime.handle, "--host", "tokyo-1")
    runtime.refresh_from_db()
    assert runtime.runtime_class == "usage-limited"
    assert runtime.resumes_at == datetime(2026, 12, 1, 0, 0, tzinfo=UTC)  # Dec 1, 9am in Tokyo
    call_command("harvest_runtime", runtime.handle, "--host", "tokyo-1")
    assert "already harvested" in capsys.readouterr().out
    assert runtime.events.count() == 1


@pytest.mark.django_db
def test_an_unknown_reset_pauses_for_the_configured_default(settings):
    settings.CONTROLROOM = {**settings.CONTROLROOM, "USAGE_LIMIT_PAUSE": 1800.0}
    runtime = make_runtime(provider="claude", runtime_class="tmux-live")
    outcome = classify_claude(json.dumps(claude_result("success", True, "You've hit your session limit")))
    transition = exit_transition(runtime, "harvest", 1, None, outcome=outcome, now=AT_0500)
    assert transition.updates["resumes_at"] == datetime(2026, 11, 26, 5, 30, tzinfo=UTC)
    assert transition.ticket_note == "paused until 05:30 (usage limit) — reset time not given"


def test_the_host_time_zone_setting_fails_loudly_on_garbage_and_defaults_from_the_system(monkeypatch):
    from django.core.exceptions import ImproperlyConfigured

    from controlroom.settings import local_time_zone

    monkeypatch.setenv("CONTROLROOM_HOST_TIME_ZONE", "Asia/Tokyo")
    assert local_time_zone() == "Asia/Tokyo"
    monkeypatch.setenv("CONTROLROOM_HOST_TIME_ZONE", "Not/AZone")
    with pytest.raises(ImproperlyConfigured, match="'Not/AZone' is not a time zone"):
        local_time_zone()
    monkeypatch.delenv("CONTROLROOM_HOST_TIME_ZONE")
    monkeypatch.setenv("TZ", ":Europe/Lisbon")
    assert local_time_zone() == "Europe/Lisbon"
