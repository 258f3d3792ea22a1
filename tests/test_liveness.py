from datetime import UTC, datetime, timedelta

from runtimes import liveness as lv

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
POLICY = lv.Policy(start_timeout=120, websocket_idle_after=300, unknown_grace=300)


def facts(**overrides):
    fields = {
        "kind": "tmux",
        "runtime_class": lv.TMUX_LIVE,
        "controller_action": "none",
        "ticket_expects_worker": True,
        "started_at": NOW - timedelta(hours=1),
        "class_changed_at": NOW - timedelta(minutes=30),
    }
    fields.update(overrides)
    return lv.RuntimeFacts(**fields)


def pane(**overrides):
    fields = {
        "session": "s", "window_index": "0", "pane_index": "0", "pane_id": "%1", "pid": 10, "dead": False,
        "dead_status": None, "dead_signal": None, "activity": None, "current_command": "claude",
    }  # fmt: skip
    fields.update(overrides)
    return lv.PaneFacts(**fields)


def classify(f, obs=None, now=NOW):
    return lv.classify(f, obs or lv.Observation(), now, POLICY)


def test_a_dead_pane_without_a_reported_status_waits_for_the_next_pass():
    result = classify(facts(), lv.Observation(pane=pane(dead=True)))
    assert result.runtime_class == lv.TMUX_LIVE


def test_controller_actions_win_over_any_observation_and_never_need_attention():
    killed = classify(facts(controller_action="kill"), lv.Observation(tmux_error="boom"))
    completed = classify(facts(controller_action="complete", kind="process"))
    assert (killed.runtime_class, killed.needs_attention) == (lv.KILLED_BY_CONTROLLER, False)
    assert (completed.runtime_class, completed.needs_attention) == (lv.COMPLETED_BY_CONTROLLER, False)


def test_websocket_is_never_tmux_whatever_the_ticket():
    for expects in (True, False):
        idle = classify(
            facts(kind="websocket", ticket_expects_worker=expects, last_activity_at=NOW - timedelta(hours=2))
        )
        assert (idle.runtime_class, idle.needs_attention) == (lv.WEBSOCKET_IDLE, False)
    active = classify(facts(kind="websocket", last_activity_at=NOW - timedelta(seconds=5)))
    assert active.runtime_class == lv.WEBSOCKET_ACTIVE


def test_process_rows_are_never_tmux():
    for state in (lv.ALIVE, lv.GONE, lv.ZOMBIE, lv.REUSED):
        result = classify(facts(kind="process"), lv.Observation(process=lv.ProcessFacts(5, state)))
        assert not result.runtime_class.startswith("tmux")


def test_missing_worker_needs_attention_only_when_the_ticket_expects_one():
    expected = classify(facts(), lv.Observation(pane=None))
    not_expected = classify(facts(ticket_expects_worker=False), lv.Observation(pane=None))
    assert (expected.runtime_class, expected.needs_attention) == (lv.TMUX_MISSING, True)
    assert (not_expected.runtime_class, not_expected.needs_attention) == (lv.NO_WORKER_EXPECTED, False)


def test_unknown_needs_attention_only_past_its_grace():
    obs = lv.Observation(tmux_error="tmux timed out")
    fresh = classify(facts(runtime_class=lv.UNKNOWN, class_changed_at=NOW - timedelta(seconds=30)), obs)
    old = classify(facts(runtime_class=lv.UNKNOWN, class_changed_at=NOW - timedelta(seconds=600)), obs)
    assert (fresh.needs_attention, old.needs_attention) == (False, True)


def test_a_dead_process_does_not_wait_for_the_start_deadline():
    result = classify(
        facts(kind="process", runtime_class=lv.PENDING, started_at=NOW - timedelta(seconds=5)),
        lv.Observation(process=lv.ProcessFacts(5, lv.GONE)),
    )
    assert (result.runtime_class, result.reason) == (lv.PROCESS_DEAD, "process-exited")


def test_exited_failed_needs_attention_but_partial_useful_does_not():
    assert lv.needs_attention(lv.EXITED, "failed", True, 0, POLICY)
    assert not lv.needs_attention(lv.EXITED, "partial-useful", True, 0, POLICY)
    assert not lv.needs_attention(lv.EXITED, "failed", False, 0, POLICY)


def test_a_death_while_the_controller_is_stopping_it_is_a_controller_kill_never_a_failure():
    stopping = {"controller_action": lv.STOPPING}
    deaths = [
        (facts(**stopping), lv.Observation(pane=pane(dead=True, dead_signal=15))),
        (facts(**stopping), lv.Observation(pane=pane(dead=True, dead_status=1))),
        (facts(**stopping), lv.Observation()),  # the session is gone
        (facts(kind="process", runtime_class=lv.PROCESS_LIVE, **stopping), lv.Observation(
            process=lv.ProcessFacts(10, lv.GONE))),
        (facts(ticket_expects_worker=False, **stopping), lv.Observation()),
    ]  # fmt: skip
    for f, obs in deaths:
        result = classify(f, obs)
        assert (result.runtime_class, result.reason, result.needs_attention) == (
            lv.KILLED_BY_CONTROLLER, "controller-kill", False
        ), obs  # fmt: skip
        assert result.exit_signal is None and result.exit_code is None


def test_a_worker_still_alive_or_unseen_while_being_stopped_keeps_its_class():
    for obs in (lv.Observation(pane=pane()), lv.Observation(tmux_error="server busy"),
                lv.Observation(pane=pane(dead=True))):  # fmt: skip
        assert classify(facts(controller_action=lv.STOPPING), obs).runtime_class == lv.TMUX_LIVE


def test_a_stop_requested_from_another_host_changes_nothing_until_that_host_acts():
    result = classify(facts(controller_action=lv.STOP_REQUESTED), lv.Observation(pane=pane(dead=True, dead_signal=9)))
    assert (result.runtime_class, result.exit_signal) == (lv.EXITED, 9)
