from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from runtimes.models import ExitOutcome, LivenessEvent, Runtime, RuntimeClass
from tests.conftest import make_runtime, make_ticket
from tickets.models import Ticket, Verdict

pytestmark = pytest.mark.django_db

CHANGELISTS = [
    "admin:runtimes_runtime_changelist",
    "admin:tickets_ticket_changelist",
    "admin:runtimes_livenessevent_changelist",
    "admin:tickets_verdict_changelist",
    "admin:runtimes_workerprofile_changelist",
    "admin:runtimes_modelsmokeresult_changelist",
    "admin:runtimes_reconcilerheartbeat_changelist",
]


def make_fleet(count):
    """`count` tickets, each with a live tmux worker, a dead process and a ledger event."""
    for _ in range(count):
        ticket = make_ticket()
        live = make_runtime(ticket=ticket, runtime_class=RuntimeClass.TMUX_LIVE, model="claude-opus-4-7")
        make_runtime(ticket=ticket, kind="process", runtime_class=RuntimeClass.PROCESS_DEAD)
        LivenessEvent.objects.create(
            runtime=live, to_class=RuntimeClass.TMUX_LIVE, reason="pane-alive", source="reconciler"
        )
        Verdict.objects.create(ticket=ticket, gate="coder", outcome="done", runtime=live)


def handles_in(response):
    return {row.handle for row in response.context["cl"].result_list}


def test_every_admin_page_renders(admin_client):
    make_fleet(2)
    runtime = Runtime.objects.first()
    event = LivenessEvent.objects.first()
    pages = [reverse("admin:index"), *(reverse(name) for name in CHANGELISTS)]
    pages += [
        reverse("admin:runtimes_runtime_change", args=[runtime.pk]),
        reverse("admin:tickets_ticket_change", args=[runtime.ticket_id]),
        reverse("admin:runtimes_livenessevent_change", args=[event.pk]),
        reverse("admin:tickets_ticket_add"),
        reverse("admin:runtimes_runtime_add"),
        reverse("admin:runtimes_workerprofile_add"),
    ]
    for page in pages:
        assert admin_client.get(page).status_code == 200, page


@pytest.mark.parametrize("name", CHANGELISTS)
def test_changelists_run_a_constant_number_of_queries(admin_client, name):
    def count_queries():
        with CaptureQueriesContext(connection) as queries:
            assert admin_client.get(reverse(name)).status_code == 200
        return len(queries)

    make_fleet(5)
    small = count_queries()
    make_fleet(45)
    assert count_queries() == small


def test_runtime_change_page_runs_a_constant_number_of_queries(admin_client):
    runtime = make_runtime()

    def count_queries():
        with CaptureQueriesContext(connection) as queries:
            admin_client.get(reverse("admin:runtimes_runtime_change", args=[runtime.pk]))
        return len(queries)

    count_queries()  # the first page of a process fills per-process caches (content types, permissions)
    for _ in range(5):
        LivenessEvent.objects.create(runtime=runtime, to_class="tmux-live", reason="pane-alive", source="reconciler")
    small = count_queries()
    for _ in range(45):
        LivenessEvent.objects.create(runtime=runtime, to_class="tmux-live", reason="pane-alive", source="reconciler")
    assert count_queries() == small


def test_runtime_class_filter_selects_each_class_through_the_changelist(admin_client):
    idle = make_runtime(kind="websocket", runtime_class=RuntimeClass.WEBSOCKET_IDLE)
    live = make_runtime(runtime_class=RuntimeClass.TMUX_LIVE)
    dead = make_runtime(kind="process", runtime_class=RuntimeClass.PROCESS_DEAD)
    url = reverse("admin:runtimes_runtime_changelist")

    assert handles_in(admin_client.get(url, {"runtime_class": "websocket-idle"})) == {idle.handle}
    assert handles_in(admin_client.get(url, {"runtime_class": "tmux-live"})) == {live.handle}
    assert handles_in(admin_client.get(url, {"runtime_class": "live"})) == {idle.handle, live.handle}
    assert handles_in(admin_client.get(url, {"runtime_class": "ended"})) == {dead.handle}
    assert handles_in(admin_client.get(url)) == {idle.handle, live.handle, dead.handle}


def test_needs_attention_filter_ignores_tickets_that_expect_no_worker(admin_client):
    missing = make_runtime(runtime_class=RuntimeClass.TMUX_MISSING, class_reason="session-missing")
    make_runtime(runtime_class=RuntimeClass.TMUX_MISSING, ticket=make_ticket(kind=Ticket.Kind.UMBRELLA))
    make_runtime(runtime_class=RuntimeClass.TMUX_MISSING, ticket=make_ticket(state=Ticket.State.WAITING))
    failed = make_runtime(runtime_class=RuntimeClass.EXITED, exit_outcome=ExitOutcome.FAILED)
    make_runtime(runtime_class=RuntimeClass.EXITED, exit_outcome=ExitOutcome.PARTIAL_USEFUL)
    old_unknown = make_runtime(runtime_class=RuntimeClass.UNKNOWN, class_changed_at=timezone.now() - timedelta(hours=1))
    make_runtime(runtime_class=RuntimeClass.UNKNOWN)  # unknown, but still within its grace
    url = reverse("admin:runtimes_runtime_changelist")

    expected = {missing.handle, failed.handle, old_unknown.handle}
    assert handles_in(admin_client.get(url, {"attention": "yes"})) == expected
    assert handles_in(admin_client.get(url, {"runtime_class": "attention"})) == expected
    page = admin_client.get(url).content.decode()
    assert page.count('title="needs attention: ') == 3
    assert "⚠ session missing" in page  # the reason, in words


def test_admin_index_counts_runtimes_per_class_and_attention(admin_client):
    make_runtime(runtime_class=RuntimeClass.TMUX_LIVE)
    make_runtime(runtime_class=RuntimeClass.TMUX_LIVE)
    make_runtime(runtime_class=RuntimeClass.TMUX_MISSING)
    response = admin_client.get(reverse("admin:index"))
    assert ("tmux-live", 2) in response.context["class_counts"]
    assert response.context["attention_count"] == 1
    assert 'id="runtime-class-counts"' in response.content.decode()


def test_ticket_changelist_counts_live_and_attention_runtimes(admin_client):
    ticket = make_ticket(failure_reason="worker tmux:x died")
    make_runtime(ticket=ticket, runtime_class=RuntimeClass.TMUX_LIVE)
    make_runtime(ticket=ticket, runtime_class=RuntimeClass.PROCESS_DEAD, kind="process")
    quiet = make_ticket()
    response = admin_client.get(reverse("admin:tickets_ticket_changelist"))
    rows = {t.key: t for t in response.context["cl"].result_list}
    assert (rows[ticket.key].live_count, rows[ticket.key].attention_count) == (1, 1)
    assert (rows[quiet.key].live_count, rows[quiet.key].attention_count) == (0, 0)
    assert response.content.decode().count('class="cr-banner"') == 1


def test_user_supplied_text_is_escaped(admin_client):
    evil = "<script>alert('x')</script>"
    ticket = make_ticket(title=evil, failure_reason=evil)
    runtime = make_runtime(ticket=ticket, model=evil, runtime_class=RuntimeClass.TMUX_MISSING, class_message=evil)
    for page in (
        reverse("admin:runtimes_runtime_changelist"),
        reverse("admin:tickets_ticket_changelist"),
        reverse("admin:tickets_ticket_change", args=[ticket.pk]),
        reverse("admin:runtimes_runtime_change", args=[runtime.pk]),
    ):
        content = admin_client.get(page).content.decode()
        assert evil not in content, page
        assert "&lt;script&gt;" in content, page


def test_ledger_is_read_only_in_the_admin(admin_client):
    runtime = make_runtime()
    event = LivenessEvent.objects.create(
        runtime=runtime, to_class="tmux-live", reason="pane-alive", source="reconciler"
    )
    assert admin_client.get(reverse("admin:runtimes_livenessevent_add")).status_code == 403
    response = admin_client.post(reverse("admin:runtimes_livenessevent_change", args=[event.pk]), {"reason": "x"})
    assert response.status_code == 403
    event.refresh_from_db()
    assert event.reason == "pane-alive"


@pytest.mark.parametrize(
    "kind, fields, message",
    [
        ("websocket", {"tmux_target": "cr-x"}, "websocket console has no tmux pane"),
        ("process", {"pid": ""}, "background-process runtime needs its pid"),
        ("tmux", {"tmux_target": ""}, "tmux runtime needs a tmux target"),
    ],
)
def test_admin_form_rejects_contradictory_runtime_fields(admin_client, kind, fields, message):
    ticket = make_ticket()
    data = {
        "ticket": ticket.pk, "kind": kind, "handle": "x:contradiction", "host": "h", "provider": "other",
        "tmux_target": "", "tmux_socket": "", "started_at_0": "2026-11-24", "started_at_1": "10:00:00",
        "events-TOTAL_FORMS": "0", "events-INITIAL_FORMS": "0", **fields,
    }  # fmt: skip
    response = admin_client.post(reverse("admin:runtimes_runtime_add"), data)
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not Runtime.objects.filter(handle="x:contradiction").exists()


def test_admin_form_rejects_an_invalid_ticket_key(admin_client):
    data = {"key": "not a key", "title": "t", "state": "backlog", "kind": "task", "priority": 3}
    response = admin_client.post(reverse("admin:tickets_ticket_add"), data)
    assert response.status_code == 200
    assert "like MC-4502" in response.content.decode()
    assert not Ticket.objects.exists()


@pytest.mark.skipif(connection.vendor != "postgresql", reason="needs PostgreSQL (the row estimate is pg_class's)")
def test_the_ledger_changelist_pages_a_large_table_without_counting_it(admin_client, monkeypatch):
    from runtimes.admin import EstimatedCountPaginator

    monkeypatch.setattr(EstimatedCountPaginator, "EXACT_BELOW", 10)
    runtime = make_runtime()
    LivenessEvent.objects.bulk_create(
        LivenessEvent(runtime=runtime, to_class="tmux-live", reason="pane-alive", source="reconciler")
        for _ in range(50)
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE runtimes_livenessevent")
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(reverse("admin:runtimes_livenessevent_changelist"))
    assert response.status_code == 200
    counts = [q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"] and "livenessevent" in q["sql"]]
    assert counts == []
    assert response.context["cl"].result_count >= 10


def test_ticket_changelist_filters_tickets_with_a_failure_banner(admin_client):
    flagged = make_ticket(failure_reason="tmux:cr-1: session missing")
    make_ticket()
    response = admin_client.get(reverse("admin:tickets_ticket_changelist"), {"banner": "yes"})
    assert [t.key for t in response.context["cl"].result_list] == [flagged.key]
