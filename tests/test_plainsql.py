"""runtimes.plainsql: its reads give what the ORM gives for the same rows, on either database."""

import threading
from decimal import Decimal

import pytest
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from runtimes import plainsql
from runtimes.intake import hooks, reports, tokens
from runtimes.models import ApiToken, LivenessEvent, Runtime, RuntimeClass
from runtimes.notify.models import AttentionEpisode
from tests.conftest import make_runtime, make_ticket


@pytest.mark.django_db
def test_a_read_gives_the_orms_values_converted_across_a_foreign_key_in_primary_key_order():
    now = timezone.now()
    runtimes = [
        make_runtime(ticket=make_ticket(title=f"ticket {n}"), started_at=now, cost_usd=Decimal("1.25") * n,
                     resumes_at=None if n % 2 else now, pid_create_time=1795663518.81)
        for n in range(4)
    ]  # fmt: skip
    fields = ("pk", "started_at", "resumes_at", "cost_usd", "pid_create_time", "ticket__key", "ticket__title")
    wanted = [runtimes[2].pk, runtimes[0].pk, runtimes[2].pk, runtimes[3].pk, 987_654]  # repeated, unknown
    rows = plainsql.read(plainsql.Read(Runtime, fields), wanted)
    orm = Runtime.objects.filter(pk__in=wanted).order_by("pk").values_list(*fields)
    assert rows == list(orm)
    assert [row[0] for row in rows] == sorted({runtimes[0].pk, runtimes[2].pk, runtimes[3].pk})
    assert isinstance(rows[0][1], type(now)) and rows[0][1] == now  # a datetime, not SQLite's text
    assert rows[-1][3] == Decimal("3.75") and rows[-1][5:] == (runtimes[3].ticket.key, "ticket 3")
    assert plainsql.read(plainsql.Read(Runtime, fields), []) == []


@pytest.mark.django_db
def test_a_read_by_another_key_leaves_out_the_excluded_rows():
    runtime, other = make_runtime(), make_runtime()
    AttentionEpisode.objects.create(runtime=runtime, runtime_class=RuntimeClass.WAITING_INPUT, state="closed")
    unfinished = AttentionEpisode.objects.create(runtime=runtime, runtime_class=RuntimeClass.WAITING_INPUT)
    AttentionEpisode.objects.create(runtime=other, runtime_class=RuntimeClass.STALLED, state="closing")
    spec = plainsql.Read(
        AttentionEpisode, ("runtime_id", "pk", "state"), key="runtime_id", exclude=(("state", "closed"),)
    )
    assert plainsql.read(spec, [runtime.pk]) == [(runtime.pk, unfinished.pk, "open")]


@pytest.mark.django_db
def test_a_read_of_more_keys_than_one_select_names_reads_them_all(monkeypatch):
    monkeypatch.setattr(plainsql, "IN_KEYS", 3)
    runtimes = [make_runtime() for _ in range(7)]
    rows = plainsql.read(plainsql.Read(Runtime, ("pk", "handle")), [r.pk for r in reversed(runtimes)])
    assert rows == [(r.pk, r.handle) for r in runtimes]


@pytest.mark.django_db
def test_instances_load_every_field_as_the_orm_does_with_the_related_values_beside():
    runtime = make_runtime(cost_usd=Decimal("0.50"), started_at=timezone.now(), controller_action="stop")
    LivenessEvent.objects.create(runtime=runtime, at=timezone.now(), to_class="exited", observed={"a": [1]})
    [(loaded, related)] = plainsql.instances(Runtime, [runtime.pk], ("ticket__state", "ticket__kind"))
    orm = Runtime.objects.get(pk=runtime.pk)
    assert {f.attname: getattr(loaded, f.attname) for f in Runtime._meta.concrete_fields} == {
        f.attname: getattr(orm, f.attname) for f in Runtime._meta.concrete_fields
    }
    assert not loaded._state.adding and related == (runtime.ticket.state, runtime.ticket.kind)
    [(event, ())] = plainsql.instances(LivenessEvent, [runtime.events.get().pk])
    assert event.observed == {"a": [1]}  # JSON decoded, as the ORM decodes it


@pytest.mark.django_db
def test_a_field_across_a_nullable_foreign_key_reads_as_none_where_there_is_no_row():
    runtime = make_runtime()
    bound, _ = tokens.mint("one runtime", runtime=runtime)
    free, _ = tokens.mint("any host")
    rows = plainsql.read(plainsql.Read(ApiToken, ("pk", "runtime__handle")), [bound.pk, free.pk])
    assert rows == [(bound.pk, runtime.handle), (free.pk, None)]


def test_a_field_two_relations_away_an_exclude_that_would_drop_nulls_or_a_lock_by_another_key_is_refused():
    with pytest.raises(ValueError, match="one foreign key"):
        plainsql.read(plainsql.Read(LivenessEvent, ("runtime__ticket__key",)), [1])
    with pytest.raises(ValueError, match="NOT NULL"):
        plainsql.read(plainsql.Read(Runtime, ("pk",), exclude=(("exit_code", 0),)), [1])
    with pytest.raises(ValueError, match="NOT NULL"):
        plainsql.read(plainsql.Read(Runtime, ("pk",), exclude=(("handle", None),)), [1])
    with pytest.raises(ValueError, match="primary key can lock"):
        plainsql.read(plainsql.Read(AttentionEpisode, ("pk",), key="runtime_id", lock=True), [1])


@pytest.mark.django_db
def test_a_batch_of_reports_reads_and_writes_in_a_fixed_number_of_statements(django_assert_num_queries):
    ticket = make_ticket()
    runtimes = [make_runtime(ticket=ticket, runtime_class=RuntimeClass.TMUX_LIVE) for _ in range(3)]
    _, token = tokens.mint("reporter", host="test-host")
    token = tokens.resolve(token)
    now = timezone.now()
    prompt = {"hook_event_name": "Notification", "notification_type": "permission_prompt", "message": "allow?"}
    batch = [
        reports.Report(r.pk, hooks.claude_hook(prompt, now), LivenessEvent.Source.HOOK, now, token) for r in runtimes
    ]
    # The savepoint and its release, the token, the runtimes and their tickets (one locked read,
    # not a ticket query per runtime), one UPDATE for the three, one INSERT of their ledger rows.
    with django_assert_num_queries(6):
        written = reports.record_reports(batch)
    assert [r.runtime.runtime_class for r in written.results] == [RuntimeClass.WAITING_INPUT] * 3
    assert all(r.runtime.ticket_expects for r in written.results)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="needs PostgreSQL (SQLite locks the whole database)")
@pytest.mark.django_db(transaction=True)
def test_a_locked_read_holds_its_rows_until_the_transaction_ends():
    runtime, free = make_runtime(), make_runtime()
    outcome = {}

    def try_lock(pk):
        try:
            with transaction.atomic():
                outcome[pk] = list(Runtime.objects.select_for_update(nowait=True).filter(pk=pk).values_list("pk"))
        except DatabaseError:
            outcome[pk] = "locked"
        finally:
            connection.close()

    with transaction.atomic():
        plainsql.read(plainsql.Read(Runtime, ("pk",), lock=True), [runtime.pk])
        for pk in (runtime.pk, free.pk):
            other = threading.Thread(target=try_lock, args=(pk,))
            other.start()
            other.join(timeout=30)
    assert outcome == {runtime.pk: "locked", free.pk: [(free.pk,)]}


@pytest.mark.django_db
def test_an_update_changes_only_the_named_rows_that_still_hold_and_says_how_many(monkeypatch):
    monkeypatch.setattr(plainsql, "IN_KEYS", 2)
    at = timezone.now()
    episodes = [
        AttentionEpisode.objects.create(runtime=make_runtime(), runtime_class=RuntimeClass.STALLED, state=state)
        for state in ("closing", "closing", "open", "closing", "closing")
    ]
    named = [e.pk for e in episodes[:4]]  # the last is not named; the third no longer holds
    changes = {"state": "open", "closed_at": None, "end_class": ""}
    changed = plainsql.update(AttentionEpisode, named, changes, where={"state": "closing"}, increments={"flaps": 2})
    assert changed == 3
    stored = {e.pk: (e.state, e.flaps) for e in AttentionEpisode.objects.all()}
    assert [stored[e.pk] for e in episodes] == [("open", 2), ("open", 2), ("open", 0), ("open", 2), ("closing", 0)]
    assert plainsql.update(AttentionEpisode, [episodes[4].pk], {"state": "closing", "closed_at": at}) == 1
    assert AttentionEpisode.objects.get(pk=episodes[4].pk).closed_at == at
