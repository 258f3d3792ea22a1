"""The pure classifier with workers' own reports: waiting-input, usage-limited, stalled."""

from datetime import UTC, datetime, timedelta

from runtimes import liveness as lv
from tests.test_liveness import facts as base_facts

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
POLICY = lv.Policy(idle_prompt_grace=600, stall_after=900, usage_limit_grace=600, usage_limit_pause=3600)


def facts(**overrides):
    return base_facts(**{"class_reason": "pane-alive", **overrides})


def alive_pane(activity_ago=10):
    pane = lv.PaneFacts("s", "0", "0", "%1", 10, False, None, None, None, "claude")
    return lv.Observation(pane=pane, progress_at=NOW - timedelta(seconds=activity_ago))


def report(reason, ago=0, resumes_at=None):
    return lv.Report(reason, NOW - timedelta(seconds=ago), resumes_at)


def classify(f, obs, now=NOW):
    return lv.classify(f, obs, now, POLICY)


def test_a_permission_prompt_is_waiting_input_and_needs_a_person_at_once():
    result = classify(facts(), lv.Observation(report=report(lv.PERMISSION_PROMPT), probed=False))
    assert (result.runtime_class, result.reason, result.needs_attention) == (
        lv.WAITING_INPUT, lv.PERMISSION_PROMPT, True
    )  # fmt: skip


def test_an_idle_prompt_needs_attention_only_after_its_grace():
    fresh = facts(runtime_class=lv.WAITING_INPUT, class_reason=lv.IDLE_PROMPT, class_changed_at=NOW,
                  report=report(lv.IDLE_PROMPT, ago=30))  # fmt: skip
    assert classify(fresh, alive_pane(activity_ago=60)).runtime_class == lv.WAITING_INPUT
    assert not classify(fresh, alive_pane(activity_ago=60)).needs_attention
    old = facts(runtime_class=lv.WAITING_INPUT, class_reason=lv.IDLE_PROMPT,
                class_changed_at=NOW - timedelta(seconds=601), report=report(lv.IDLE_PROMPT, ago=601))  # fmt: skip
    assert classify(old, alive_pane(activity_ago=700)).needs_attention


def test_a_waiting_worker_stays_waiting_on_the_next_pass_and_is_never_stalled_meanwhile():
    waiting = facts(runtime_class=lv.WAITING_INPUT, class_reason=lv.PERMISSION_PROMPT,
                    report=report(lv.PERMISSION_PROMPT, ago=3600))  # fmt: skip
    result = classify(waiting, alive_pane(activity_ago=3600))
    assert (result.runtime_class, result.needs_attention) == (lv.WAITING_INPUT, True)


def test_a_sign_of_work_after_the_report_returns_the_live_class():
    waiting = facts(runtime_class=lv.WAITING_INPUT, class_reason=lv.PERMISSION_PROMPT,
                    report=report(lv.PERMISSION_PROMPT, ago=60))  # fmt: skip
    assert classify(waiting, alive_pane(activity_ago=1)).runtime_class == lv.TMUX_LIVE
    worked = lv.Observation(report=report(lv.WORKING), probed=False)
    assert classify(waiting, worked).runtime_class == lv.TMUX_LIVE


def test_output_right_after_the_report_does_not_cancel_it():
    # The permission dialog is drawn a moment after the hook fires: that is not work.
    waiting = facts(report=report(lv.PERMISSION_PROMPT, ago=2))
    assert classify(waiting, alive_pane(activity_ago=1)).runtime_class == lv.WAITING_INPUT


def test_a_usage_limit_is_no_failure_and_needs_attention_only_past_its_reset_plus_grace():
    resumes = NOW + timedelta(hours=1)
    limited = lv.Observation(report=report(lv.USAGE_LIMIT, resumes_at=resumes), probed=False)
    result = classify(facts(), limited)
    assert (result.runtime_class, result.reason, result.needs_attention) == (lv.USAGE_LIMITED, lv.USAGE_LIMIT, False)
    stored = facts(runtime_class=lv.USAGE_LIMITED, class_reason=lv.USAGE_LIMIT, resumes_at=resumes,
                   report=report(lv.USAGE_LIMIT, resumes_at=resumes))  # fmt: skip
    assert not classify(stored, alive_pane(3600), now=resumes + timedelta(seconds=599)).needs_attention
    late = classify(stored, alive_pane(9000), now=resumes + timedelta(seconds=600))
    assert (late.runtime_class, late.needs_attention) == (lv.USAGE_LIMITED, True)


def test_a_worker_with_no_sign_of_progress_for_the_stall_period_is_stalled_and_needs_attention():
    result = classify(facts(), alive_pane(activity_ago=900))
    assert (result.runtime_class, result.reason, result.needs_attention) == (lv.STALLED, lv.NO_PROGRESS, True)
    assert classify(facts(), alive_pane(activity_ago=899)).runtime_class == lv.TMUX_LIVE


def test_a_reported_sign_of_work_keeps_a_quiet_pane_from_stalling():
    quiet = facts(progress_at=NOW - timedelta(seconds=100))
    assert classify(quiet, alive_pane(activity_ago=5000)).runtime_class == lv.TMUX_LIVE


def test_a_stalled_worker_that_moves_again_is_live():
    stalled = facts(runtime_class=lv.STALLED, class_reason=lv.NO_PROGRESS)
    assert classify(stalled, alive_pane(activity_ago=3)).runtime_class == lv.TMUX_LIVE


def test_a_process_without_any_progress_source_is_never_called_stalled():
    alive = lv.Observation(process=lv.ProcessFacts(pid=10, state=lv.ALIVE))
    assert classify(facts(kind="process", runtime_class=lv.PROCESS_LIVE), alive).runtime_class == lv.PROCESS_LIVE


def test_a_websocket_console_is_waiting_input_when_it_says_so_but_never_tmux_or_stalled():
    console = facts(kind="websocket", runtime_class=lv.WEBSOCKET_IDLE, last_activity_at=NOW - timedelta(hours=5))
    assert classify(console, lv.Observation()).runtime_class == lv.WEBSOCKET_IDLE
    asked = classify(console, lv.Observation(report=report(lv.PERMISSION_PROMPT), probed=False))
    assert asked.runtime_class == lv.WAITING_INPUT


def test_a_report_never_resurrects_a_missing_or_settled_worker():
    for gone in (lv.TMUX_MISSING, lv.EXITED, lv.KILLED_BY_CONTROLLER):
        result = classify(facts(runtime_class=gone), lv.Observation(report=report(lv.WORKING), probed=False))
        assert result.runtime_class == gone


def test_a_report_proves_a_pending_worker_started():
    pending = facts(runtime_class=lv.PENDING)
    assert classify(pending, lv.Observation(report=report(lv.WORKING), probed=False)).runtime_class == lv.TMUX_LIVE


def test_a_dead_pane_ends_a_waiting_worker_as_any_other():
    waiting = facts(runtime_class=lv.WAITING_INPUT, class_reason=lv.PERMISSION_PROMPT,
                    report=report(lv.PERMISSION_PROMPT, ago=60))  # fmt: skip
    dead = lv.PaneFacts("s", "0", "0", "%1", 10, True, 0, None, None, "claude")
    assert classify(waiting, lv.Observation(pane=dead)).runtime_class == lv.EXITED


def test_a_silent_host_turns_a_waiting_worker_unknown():
    waiting = facts(runtime_class=lv.WAITING_INPUT, report=report(lv.PERMISSION_PROMPT, ago=60))
    assert classify(waiting, lv.Observation(host_silent="quiet")).runtime_class == lv.UNKNOWN
