"""The operator console, the runtime page and the ticket page, through Django's test client
(the browser tests are in test_browser.py)."""

import sys
from datetime import timedelta
from decimal import Decimal
from types import SimpleNamespace

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from runtimes.console import board, humanize
from runtimes.models import LivenessEvent, ReconcilerHeartbeat, RuntimeClass, WatcherHeartbeat
from runtimes.probes import tmux as tmux_probe
from tests.conftest import make_runtime, make_ticket, start_session, wait_for
from tests.test_roles import login_as
from tickets.models import Comment, Ticket, Verdict

pytestmark = pytest.mark.django_db


def missing(minutes_ago, **overrides):
    fields = {
        "runtime_class": RuntimeClass.TMUX_MISSING,
        "class_reason": "session-missing",
        "class_changed_at": timezone.now() - timedelta(minutes=minutes_ago),
    }
    return make_runtime(**{**fields, **overrides})


# --- the console page ---------------------------------------------------------------------------


def test_console_groups_the_attention_lane_by_reason_oldest_first(client):
    login_as(client, "viewers")
    newer = missing(5, host="hostb")
    older = missing(30, host="hosta")
    dead = make_runtime(
        kind="process", runtime_class=RuntimeClass.PROCESS_DEAD, class_reason="process-exited",
        class_changed_at=timezone.now() - timedelta(minutes=12),
    )  # fmt: skip
    make_runtime(runtime_class=RuntimeClass.TMUX_LIVE)  # alive: not in the lane
    missing(60, ticket=make_ticket(state=Ticket.State.DONE))  # no worker expected: not in the lane

    response = client.get(reverse("console:index"))

    assert response.status_code == 200
    lane = response.context["lane"]
    assert [group.label for group in lane.groups] == ["session missing", "process exited"]
    assert [r.handle for r in lane.groups[0].runtimes] == [older.handle, newer.handle]
    assert lane.groups[1].runtimes == [dead]
    page = response.content.decode()
    assert "Needs attention: 3" in page
    assert "for 12 min" in page and "for 30 min" in page
    assert older.ticket.key in page and "hosta" in page
    assert 'hx-trigger="every 3s"' in page  # the lane refreshes itself
    assert "Stop…" not in page and "read-only" in page  # viewers see no actions


def test_operators_see_stop_and_recover_in_the_lane(client):
    login_as(client, "operators")
    runtime = missing(3)
    page = client.get(reverse("console:index")).content.decode()
    assert reverse("admin:runtimes_runtime_stop", args=[runtime.pk]) in page
    assert reverse("admin:runtimes_runtime_recover", args=[runtime.pk]) in page


def test_console_needs_a_staff_login_and_the_view_permission(client):
    url = reverse("console:index")
    assert client.get(url)["Location"].startswith(reverse("admin:login"))
    client.force_login(User.objects.create_user("nobody", password="pw", is_staff=True))
    assert client.get(url).status_code == 403
    assert client.get(reverse("console:attention")).status_code == 403


def test_the_admin_index_links_to_the_console(client):
    login_as(client, "viewers")
    assert reverse("console:index") in client.get(reverse("admin:index")).content.decode()


def test_a_refresh_marks_only_rows_that_changed_since_the_last_one(client):
    login_as(client, "viewers")
    last_refresh = timezone.now() - timedelta(seconds=3)
    old = missing(10)
    new = missing(0)
    page = client.get(reverse("console:attention"), {"since": f"{last_refresh.timestamp():.3f}"}).content.decode()
    assert f'id="lane-runtime-{new.pk}" class="cr-changed"' in page
    assert f'id="lane-runtime-{old.pk}">' in page
    assert "<html" not in page  # a partial, not a page


@pytest.mark.parametrize("since", ["garbage", "nan", "inf", "-5", "9" * 40])
def test_a_bad_since_parameter_is_ignored(client, since):
    login_as(client, "viewers")
    missing(0)
    response = client.get(reverse("console:attention"), {"since": since})
    assert response.status_code == 200 and "cr-changed" not in response.content.decode()


def test_lane_and_fleet_partials_run_a_constant_number_of_queries(client):
    login_as(client, "viewers")

    def count(url):
        with CaptureQueriesContext(connection) as queries:
            assert client.get(url).status_code == 200
        return len(queries)

    for _ in range(3):
        missing(5, kind="process", pid=999_999, tmux_target="")
    small = [count(reverse("console:attention")), count(reverse("console:fleet"))]
    for _ in range(20):
        missing(5, kind="process", pid=999_999, tmux_target="")
    assert [count(reverse("console:attention")), count(reverse("console:fleet"))] == small


def test_user_text_in_the_lane_is_escaped(client):
    login_as(client, "viewers")
    missing(1, class_message="<script>alert(1)</script>")
    page = client.get(reverse("console:attention")).content.decode()
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page


# --- the fleet strip -------------------------------------------------------------------------------


def test_fleet_shows_host_health_with_never_reported_and_silent_hosts():
    now = timezone.now()
    make_runtime(host="fresh", runtime_class=RuntimeClass.TMUX_LIVE)
    make_runtime(host="quiet", runtime_class=RuntimeClass.TMUX_LIVE)
    make_runtime(host="ghost", runtime_class=RuntimeClass.PROCESS_LIVE, kind="process")
    ReconcilerHeartbeat.objects.create(host="fresh", finished_at=now - timedelta(seconds=20))
    ReconcilerHeartbeat.objects.create(host="quiet", finished_at=now - timedelta(hours=1))

    hosts = {host.host: host for host in board.fleet(now).hosts}

    assert (hosts["fresh"].silent, round(hosts["fresh"].age_seconds)) == (False, 20)
    assert hosts["quiet"].silent and hosts["quiet"].live == 1
    assert hosts["ghost"].heartbeat_at is None and hosts["ghost"].silent


def test_fleet_shows_each_hosts_watcher_as_watching_silent_stopped_or_none(client):
    now = timezone.now()
    for host in ("calm", "hushed", "halted", "bare"):
        make_runtime(host=host, runtime_class=RuntimeClass.TMUX_LIVE)
    WatcherHeartbeat.objects.create(host="calm", beat_at=now)
    WatcherHeartbeat.objects.create(host="hushed", beat_at=now - timedelta(hours=1))
    WatcherHeartbeat.objects.create(host="halted", beat_at=now, stopped_at=now)

    hosts = {host.host: host.watcher for host in board.fleet(now).hosts}
    assert hosts == {"calm": "watching", "hushed": "silent", "halted": "stopped", "bare": ""}
    login_as(client, "viewers")
    page = client.get(reverse("console:fleet")).content.decode()
    assert '<strong class="cr-alert">silent</strong>' in page and '<strong class="cr-alert">stopped</strong>' in page


def test_fleet_page_says_never_reported(client):
    login_as(client, "viewers")
    make_runtime(host="ghost", runtime_class=RuntimeClass.TMUX_LIVE)
    page = client.get(reverse("console:fleet")).content.decode()
    assert "ghost" in page and "never reported" in page


def test_failures_today_count_runs_that_failed_since_midnight_once_each():
    now = timezone.now()
    failed = make_runtime(runtime_class=RuntimeClass.EXITED, exit_outcome="failed")
    fine = make_runtime(runtime_class=RuntimeClass.EXITED, exit_outcome="completed")
    gone = missing(1)
    yesterday = make_runtime(runtime_class=RuntimeClass.TMUX_MISSING)
    for runtime, to_class in ((failed, "exited"), (fine, "exited"), (gone, "tmux-missing"), (gone, "tmux-missing")):
        LivenessEvent.objects.create(runtime=runtime, to_class=to_class, reason="pane-dead-exit", source="reconciler")
    LivenessEvent.objects.create(
        runtime=yesterday, to_class="tmux-missing", reason="session-missing", source="reconciler",
        at=board.start_of_day(now) - timedelta(minutes=1),
    )  # fmt: skip
    assert board.failures_today(now) == 2


def ended_run(at, cost):
    """A run that ended at `at` as the ledger writer leaves it: ended_at and its ledger row."""
    runtime = make_runtime(runtime_class=RuntimeClass.EXITED, ended_at=at, cost_usd=cost)
    LivenessEvent.objects.create(runtime=runtime, to_class="exited", reason="completed", source="harvest", at=at)
    return runtime


def test_spend_today_sums_known_costs_of_runs_ended_today_and_is_unknown_without_any():
    now = timezone.now()
    assert board.spend_today(now) is None
    ended_run(now, None)
    assert board.spend_today(now) is None  # a run that reports no cost is unknown, not free
    ended_run(now, Decimal("1.25"))
    ended_run(now, Decimal("0.50"))
    ended_run(board.start_of_day(now) - timedelta(seconds=1), Decimal("9"))  # yesterday
    assert board.spend_today(now) == Decimal("1.75")


def test_the_runtime_page_shows_turns_tokens_and_cost_where_known(client):
    login_as(client, "viewers")
    runtime = make_runtime(runtime_class=RuntimeClass.EXITED, turns=7, output_tokens=1234, cost_usd=Decimal("0.42"))
    page = client.get(reverse("console:runtime-live", args=[runtime.pk])).content.decode()
    assert "turns" in page and ">7<" in page and "1234" in page and "0.42" in page
    assert "cached tokens" not in page  # unknown figures are left out


# --- the runtime page ------------------------------------------------------------------------------


def test_the_output_tail_of_a_live_pane_comes_from_capture_pane_redacted(tmux, tmux_socket):
    script = "print('hello from the worker'); print('key sk-abcdefghijklmnopqrstuv'); import signal; signal.pause()"
    start_session(tmux, "cr-mc-7-aa", sys.executable, "-u", "-c", script)
    runtime = make_runtime(tmux_socket=tmux_socket, tmux_target="cr-mc-7-aa", runtime_class=RuntimeClass.TMUX_LIVE)

    assert wait_for(lambda: "hello from the worker" in board.output_tail(runtime).lines)
    tail = board.output_tail(runtime)
    assert tail.source == "tmux capture-pane"
    assert "key [REDACTED]" in tail.lines and not any("sk-abc" in line for line in tail.lines)


def test_capture_pane_is_bounded_to_the_lines_asked(tmux, tmux_socket):
    script = "import signal; print('\\n'.join(map(str, range(500)))); signal.pause()"
    start_session(tmux, "cr-mc-8-bb", sys.executable, "-u", "-c", script)
    assert wait_for(lambda: "499" in tmux_probe.capture_pane(tmux_socket, "cr-mc-8-bb", 5))
    lines = tmux_probe.capture_pane(tmux_socket, "cr-mc-8-bb", 5).split("\n")
    assert lines == ["495", "496", "497", "498", "499"]


def test_capture_pane_of_a_missing_session_is_a_tmux_error(tmux_socket, tmux):
    start_session(tmux, "other", "sleep", "60")
    with pytest.raises(tmux_probe.TmuxError, match="capture-pane"):
        tmux_probe.capture_pane(tmux_socket, "no-such-session", 5)


def test_the_output_tail_of_a_gone_session_is_the_end_of_its_output_log(tmp_path):
    log = tmp_path / "out.jsonl"
    log.write_text("x" * 500_000 + "\n" + "\n".join(f'{{"line": {n}}}' for n in range(100)) + "\n")
    runtime = missing(1, output_path=str(log))
    tail = board.output_tail(runtime, lines=3)
    assert tail.source == "output log"
    assert tail.lines == ['{"line": 97}', '{"line": 98}', '{"line": 99}']


def test_the_output_tail_says_why_there_is_none(tmp_path):
    assert board.output_tail(missing(1)).note == "no output recorded"
    gone = board.output_tail(missing(1, output_path=str(tmp_path / "absent.jsonl")))
    assert gone.lines == [] and "output log unreadable" in gone.note
    elsewhere = board.output_tail(make_runtime(host="far-away", runtime_class=RuntimeClass.TMUX_LIVE))
    assert "far-away" in elsewhere.note


def test_terminal_control_sequences_never_reach_the_page():
    assert board.clean_lines("\x1b[31mred\x1b[0m\r\nbell\x07 done\n", 5) == ["red", "bell done"]


@pytest.mark.parametrize(
    ("socket", "target", "expected"),
    [
        ("crtest-1", "cr-mc-1-aa", "tmux -L crtest-1 attach -t cr-mc-1-aa"),
        ("/tmp/my socks/s", "cr-mc-1-aa:0.1", "tmux -S '/tmp/my socks/s' attach -t cr-mc-1-aa"),
        ("", "cr-mc-1-aa", "tmux attach -t cr-mc-1-aa"),
        ("crtest-1", "%3", "tmux -L crtest-1 attach -t %3"),
    ],
)
def test_the_attach_command_is_argv_quoted(socket, target, expected):
    runtime = SimpleNamespace(kind="tmux", tmux_socket=socket, tmux_target=target)
    assert board.attach_command(runtime) == expected


def test_processes_and_consoles_have_no_attach_command():
    assert board.attach_command(SimpleNamespace(kind="process", tmux_socket="", tmux_target="")) == ""


def event(minutes, to_class, reason="pane-alive"):
    return SimpleNamespace(at=timezone.now().replace(microsecond=0) + timedelta(minutes=minutes),
                           to_class=to_class, reason=reason)  # fmt: skip


def test_the_timeline_draws_one_span_per_ledger_row_over_the_whole_life():
    events = [event(0, "pending", "launched"), event(10, "tmux-live"), event(30, "tmux-missing", "session-missing")]
    now = events[0].at + timedelta(minutes=40)
    spans = board.timeline(events, events[0].at, now)
    assert [s.runtime_class for s in spans] == ["pending", "tmux-live", "tmux-missing"]
    assert [s.left for s in spans] == [0.0, 25.0, 75.0]
    assert [s.width for s in spans] == [25.0, 50.0, 25.0]
    assert spans[-1].ongoing and spans[-1].end == now


def test_a_settled_runtime_timeline_ends_at_its_end():
    events = [event(0, "pending", "launched"), event(10, "exited", "completed")]
    ended = events[1].at
    spans = board.timeline(events, events[0].at, ended + timedelta(days=3), ended_at=ended)
    assert not spans[-1].ongoing and spans[0].width == 100.0


def test_the_runtime_page_shows_state_timeline_output_and_attach_command_on_top(client, tmp_path):
    login_as(client, "viewers")
    log = tmp_path / "out.log"
    log.write_text("the last words of the worker\n")
    runtime = missing(12, tmux_socket="crtest-x", output_path=str(log), class_message="session cr-x not found")
    LivenessEvent.objects.create(runtime=runtime, to_class="pending", reason="launched", source="launch",
                                 at=timezone.now() - timedelta(minutes=20))  # fmt: skip
    LivenessEvent.objects.create(runtime=runtime, from_class="pending", to_class="tmux-missing",
                                 reason="session-missing", source="reconciler")  # fmt: skip

    page = client.get(reverse("admin:runtimes_runtime_change", args=[runtime.pk])).content.decode()

    assert page.index("session cr-x not found") < page.index('id="runtime_form"')  # read first, edit below
    assert "session cr-x not found" in page and "for 12 min" in page
    assert f"tmux -L crtest-x attach -t {runtime.tmux_target}" in page
    assert "the last words of the worker" in page
    assert 'aria-label="timeline"' in page and "pending (launched)" in page
    live = client.get(reverse("console:runtime-live", args=[runtime.pk])).content.decode()
    assert "the last words of the worker" in live and "<html" not in live


def test_the_runtime_page_offers_stop_only_to_operators(client):
    runtime = make_runtime(runtime_class=RuntimeClass.TMUX_LIVE)
    url = reverse("admin:runtimes_runtime_change", args=[runtime.pk])
    login_as(client, "viewers")
    assert "Stop…" not in client.get(url).content.decode()
    client.logout()
    login_as(client, "operators")
    assert "Stop…" in client.get(url).content.decode()


def test_stop_asks_for_confirmation_then_records_a_controller_kill(client, tmux, tmux_socket):
    start_session(tmux, "cr-mc-9-cc", "sleep", "60", mark="m9")
    runtime = make_runtime(tmux_socket=tmux_socket, tmux_target="cr-mc-9-cc", launch_token="m9",
                           runtime_class=RuntimeClass.TMUX_LIVE)  # fmt: skip
    url = reverse("admin:runtimes_runtime_stop", args=[runtime.pk])
    login_as(client, "operators")

    asked = client.get(url).content.decode()
    runtime.refresh_from_db()
    assert "Yes, stop it" in asked and runtime.handle in asked
    assert runtime.runtime_class == RuntimeClass.TMUX_LIVE

    response = client.post(url, follow=True)
    runtime.refresh_from_db()
    assert runtime.runtime_class == RuntimeClass.KILLED_BY_CONTROLLER
    assert "Stopped 1 runtime(s)." in response.content.decode()
    assert runtime.events.filter(reason="controller-kill", source="controller").count() == 1


def test_viewers_cannot_stop_from_the_confirmation_page(client):
    runtime = make_runtime(runtime_class=RuntimeClass.TMUX_LIVE)
    login_as(client, "viewers")
    assert client.get(reverse("admin:runtimes_runtime_stop", args=[runtime.pk])).status_code == 403
    assert client.post(reverse("admin:runtimes_runtime_stop", args=[runtime.pk])).status_code == 403
    runtime.refresh_from_db()
    assert runtime.runtime_class == RuntimeClass.TMUX_LIVE


# --- the ticket page ---------------------------------------------------------------------------------


def test_the_ticket_page_has_one_activity_feed_newest_first(client):
    login_as(client, "viewers")
    ticket = make_ticket()
    runtime = make_runtime(ticket=ticket)
    now = timezone.now()
    Comment.objects.create(ticket=ticket, kind="controller", author="controller",
                           body="Coder gate dispatched <b>now</b>", created_at=now - timedelta(minutes=30))  # fmt: skip
    LivenessEvent.objects.create(runtime=runtime, from_class="pending", to_class="tmux-live", reason="pane-alive",
                                 source="reconciler", at=now - timedelta(minutes=20))  # fmt: skip
    Verdict.objects.create(ticket=ticket, gate="validator", outcome="approved", author="val", recorded_by="val",
                           summary="Validator gate complete", created_at=now - timedelta(minutes=10))  # fmt: skip

    feed = board.ticket_activity(ticket)
    assert [entry.kind for entry in feed] == ["verdict", "ledger", "comment"]

    page = client.get(reverse("admin:tickets_ticket_change", args=[ticket.pk])).content.decode()
    texts = ("Validator gate complete", "pending → tmux-live", "Coder gate dispatched")
    verdict, ledger, comment = (page.index(text) for text in texts)
    assert verdict < ledger < comment
    assert "&lt;b&gt;now&lt;/b&gt;" in page


def test_relative_times_carry_the_exact_time_and_zone_on_hover():
    now = timezone.now()
    html = humanize.when(now - timedelta(minutes=12), now)
    assert "12\xa0minutes ago" in html and 'title="' in html and " UTC" in html
    assert humanize.span(45) == "45 s" and humanize.span(3 * 3600 + 300) == "3 h 5 min"
    assert humanize.span(2 * 86400 + 4 * 3600) == "2 d 4 h"


def test_changelists_sort_attention_first(admin_client):
    calm = make_runtime(runtime_class=RuntimeClass.TMUX_LIVE, started_at=timezone.now())
    urgent = missing(1, started_at=timezone.now() - timedelta(days=1))
    rows = admin_client.get(reverse("admin:runtimes_runtime_changelist")).context["cl"].result_list
    assert [r.pk for r in rows][:2] == [urgent.pk, calm.pk]
    tickets = admin_client.get(reverse("admin:tickets_ticket_changelist")).context["cl"].result_list
    assert tickets[0].pk == urgent.ticket_id


def test_attention_first_paging_shows_every_runtime_once_across_pages(admin_client):
    calm = [make_runtime(runtime_class=RuntimeClass.TMUX_LIVE) for _ in range(55)]
    urgent = [missing(minutes) for minutes in (1, 2, 3)]
    url = reverse("admin:runtimes_runtime_changelist")
    first = list(admin_client.get(url).context["cl"].result_list)
    second = list(admin_client.get(url, {"p": 2}).context["cl"].result_list)
    assert {r.pk for r in first[:3]} == {r.pk for r in urgent}
    assert len(first) == 50 and len(second) == 8
    assert sorted(r.pk for r in first + second) == sorted(r.pk for r in calm + urgent)
    clicked = admin_client.get(url, {"o": "2"}).context["cl"].result_list  # a clicked column wins
    assert [r.ticket.key for r in clicked] == sorted(r.ticket.key for r in clicked)


def test_a_usage_limited_run_past_its_reset_offers_resume_which_asks_first_and_explains_a_refusal(client, settings):
    settings.CONTROLROOM = {**settings.CONTROLROOM, "USAGE_LIMIT_GRACE": 60}
    runtime = make_runtime(
        runtime_class=RuntimeClass.USAGE_LIMITED, class_reason="usage-limit",
        resumes_at=timezone.now() - timedelta(hours=2), class_changed_at=timezone.now() - timedelta(hours=3),
    )  # fmt: skip
    login_as(client, "operators")
    url = reverse("admin:runtimes_runtime_resume", args=[runtime.pk])
    assert url in client.get(reverse("console:attention")).content.decode()  # still limited past its reset
    assert url in client.get(reverse("admin:runtimes_runtime_change", args=[runtime.pk])).content.decode()

    assert "Yes, resume it" in client.get(url).content.decode()
    response = client.post(url, follow=True)
    assert "was not launched from a worker profile" in response.content.decode()  # nothing started
    runtime.refresh_from_db()
    assert runtime.runtime_class == RuntimeClass.USAGE_LIMITED
