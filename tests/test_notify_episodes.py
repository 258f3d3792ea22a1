"""The pure episode logic: when to announce, when to stay quiet, what each channel gets."""

from datetime import UTC, datetime, timedelta

from runtimes.notify import episodes
from runtimes.notify.episodes import CLOSING, HOLD, OPEN, REOPEN, RESOLVE, START, Notice, Route, Subject

NOW = datetime(2026, 11, 26, 5, 0, tzinfo=UTC)
QUIET = 120


def actions(*subjects, now=NOW, quiet=QUIET):
    return [(s.action, s.runtime_id) for s in episodes.plan(subjects, now, quiet)]


def test_a_runtime_entering_attention_starts_an_announced_episode():
    steps = episodes.plan([Subject(1, attention=True)], NOW, QUIET)
    assert [(s.action, s.announces) for s in steps] == [(START, True)]


def test_an_open_episode_that_still_needs_attention_sends_nothing_more():
    assert actions(Subject(1, attention=True, episode_id=9, episode_state=OPEN)) == []


def test_a_runtime_without_attention_or_episode_needs_no_step():
    assert actions(Subject(1, attention=False)) == []


def test_a_live_runtime_back_from_attention_holds_its_resolved_notice_for_the_quiet_period():
    steps = episodes.plan([Subject(1, attention=False, episode_id=9, episode_state=OPEN)], NOW, QUIET)
    assert [(s.action, s.announces, s.from_state) for s in steps] == [(HOLD, False, OPEN)]


def test_a_settled_runtime_resolves_at_once():
    subject = Subject(1, attention=False, settled=True, episode_id=9, episode_state=OPEN)
    steps = episodes.plan([subject], NOW, QUIET)
    assert [(s.action, s.announces) for s in steps] == [(RESOLVE, True)]


def test_a_quiet_period_of_zero_resolves_at_once():
    assert actions(Subject(1, attention=False, episode_id=9, episode_state=OPEN), quiet=0) == [(RESOLVE, 1)]


def test_a_flap_back_within_the_quiet_period_reopens_the_same_episode_silently():
    held = Subject(1, attention=True, episode_id=9, episode_state=CLOSING, closed_at=NOW - timedelta(seconds=30))
    steps = episodes.plan([held], NOW, QUIET)
    assert [(s.action, s.episode_id, s.announces) for s in steps] == [(REOPEN, 9, False)]


def test_a_held_episode_resolves_once_quiet_for_the_whole_period():
    almost = Subject(1, attention=False, episode_id=9, episode_state=CLOSING, closed_at=NOW - timedelta(seconds=119))
    quiet = Subject(2, attention=False, episode_id=8, episode_state=CLOSING, closed_at=NOW - timedelta(seconds=120))
    assert actions(almost, quiet) == [(RESOLVE, 2)]


def test_a_held_episode_of_a_runtime_that_settled_meanwhile_resolves_at_once():
    held = Subject(
        1, attention=False, settled=True, episode_id=9, episode_state=CLOSING, closed_at=NOW - timedelta(seconds=1)
    )
    assert actions(held) == [(RESOLVE, 1)]


def test_flapping_in_and_out_many_times_within_the_quiet_period_announces_only_the_first_opening():
    """Simulate the planner against its own state: in, out, in, out, … every 10 s, then quiet."""
    state, closed_at, announced = None, None, []
    timeline = [True, False] * 5 + [False] * 20
    for i, attention in enumerate(timeline):
        now = NOW + timedelta(seconds=10 * i)
        subject = Subject(1, attention, episode_id=9 if state else None, episode_state=state, closed_at=closed_at)
        for step in episodes.plan([subject], now, QUIET):
            if step.announces:
                announced.append((step.action, i))
            state, closed_at = {
                START: (OPEN, None),
                REOPEN: (OPEN, None),
                HOLD: (CLOSING, now),
                RESOLVE: (None, None),
            }[step.action]
    # Opened at 0, last left attention at 9 (90 s), resolved 120 s later (index 21).
    assert announced == [(START, 0), (RESOLVE, 21)]


def notice(runtime_id, host="a", provider="claude", runtime_class="tmux-missing", kind="opened"):
    return Notice(
        kind, f"t{runtime_id}", f"b{runtime_id}", f"line {runtime_id}", runtime_id, 1, host, provider, runtime_class
    )


def test_channel_filters_pick_hosts_providers_and_classes_and_blank_accepts_all():
    everything = Route("env:1", "all")
    codex_on_b = Route("db:2", "codex on b", hosts=frozenset({"b"}), providers=frozenset({"codex"}))
    only_unknown = Route("db:3", "unknown", classes=frozenset({"unknown"}))
    notices = [notice(1), notice(2, host="b", provider="codex"), notice(3, runtime_class="unknown")]
    out = episodes.route_notices(notices, [everything, codex_on_b, only_unknown], digest_over=5)
    got = sorted((o.route.key, o.notice.runtime_id) for o in out)
    assert got == [("db:2", 2), ("db:3", 3), ("env:1", 1), ("env:1", 2), ("env:1", 3)]


def test_a_notice_about_no_runtime_passes_every_filter():
    route = Route("db:2", "codex", providers=frozenset({"codex"}))
    budget = Notice("budget-warning", "t", "b", "l")
    assert [o.kind for o in episodes.route_notices([budget], [route], 5)] == ["budget-warning"]


def test_more_than_five_notices_for_one_channel_go_as_one_digest_listing_them_all():
    route = Route("env:1", "all")
    five = episodes.route_notices([notice(i) for i in range(5)], [route], digest_over=5)
    assert [o.kind for o in five] == ["opened"] * 5
    six = episodes.route_notices([notice(i) for i in range(5)] + [notice(9, kind="resolved")], [route], 5)
    assert [o.kind for o in six] == ["digest"]
    assert six[0].title == "[Control Room] 6 attention changes (5 need attention)"
    assert six[0].body.splitlines() == ["line 0", "line 1", "line 2", "line 3", "line 4", "line 9"]


def test_redacted_urls_show_the_scheme_and_only_a_webhooks_host():
    assert episodes.redact_url("tgram://123456789:AAbbCCdd/12345") == "tgram://…"
    assert episodes.redact_url("slack://TokenA/TokenB/TokenC/#ops") == "slack://…"
    assert episodes.redact_url("mailto://me:hunter22@gmail.com") == "mailto://…@…"
    assert episodes.redact_url("json://user:pw@hooks.example:8080/x/SECRET?k=v") == "json://…@hooks.example:8080/…"
    assert episodes.redact_url("jsons://hooks.example") == "jsons://hooks.example"
    assert episodes.redact_url("not a url") == "…"


def test_scrub_removes_every_secret_piece_of_a_url_from_text():
    url = "tgram://123456789:AAbbCCddEEff/-100200300?thread=777888"
    text = "failed for 123456789:AAbbCCddEEff chat -100200300 thread 777888 via tgram://123456789:AAbbCCddEEff"
    scrubbed = episodes.scrub(text, url)
    for secret in ("AAbbCCddEEff", "123456789", "100200300", "777888"):
        assert secret not in scrubbed
