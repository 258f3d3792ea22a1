import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction

from runtimes import liveness
from runtimes.models import Reason, Runtime, RuntimeClass
from tests.conftest import make_runtime, make_ticket
from tickets.models import Ticket

pytestmark = pytest.mark.django_db


def test_ticket_key_must_look_like_a_project_key():
    with pytest.raises(IntegrityError), transaction.atomic():
        Ticket.objects.create(key="mc 4502", title="bad")
    with pytest.raises(ValidationError):
        Ticket(key="4502", title="bad").full_clean()
    Ticket(key="MC-4502", title="good").full_clean()


def test_a_done_ticket_needs_a_closing_time():
    ticket = Ticket.objects.create(key="MC-1", title="x", state=Ticket.State.DONE)
    assert ticket.closed_at is not None  # save() stamps it
    with pytest.raises(IntegrityError), transaction.atomic():
        Ticket.objects.filter(pk=ticket.pk).update(closed_at=None)  # the database refuses a bypass


def test_tmux_runtime_without_target_is_refused_by_the_database():
    ticket = make_ticket()
    with pytest.raises(IntegrityError), transaction.atomic():
        Runtime.objects.create(ticket=ticket, kind="tmux", handle="tmux:x", tmux_target="")


def test_process_runtime_without_pid_is_refused_by_the_database():
    ticket = make_ticket()
    with pytest.raises(IntegrityError), transaction.atomic():
        Runtime.objects.create(ticket=ticket, kind="process", handle="hermes-bg:proc_0123456789ab")


def test_websocket_runtime_with_a_tmux_target_is_refused_by_the_database():
    ticket = make_ticket()
    with pytest.raises(IntegrityError), transaction.atomic():
        Runtime.objects.create(ticket=ticket, kind="websocket", handle="ws:console-1", tmux_target="oops")


def test_handle_is_unique_per_host_but_not_across_hosts():
    runtime = make_runtime(handle="tmux:cr-mc-1", host="a")
    make_runtime(handle="tmux:cr-mc-1", host="b", ticket=runtime.ticket)
    with pytest.raises(IntegrityError), transaction.atomic():
        make_runtime(handle="tmux:cr-mc-1", host="a", ticket=runtime.ticket)


def test_clean_explains_contradictory_runtime_fields():
    ticket = make_ticket()
    with pytest.raises(ValidationError) as caught:
        Runtime(ticket=ticket, kind="websocket", handle="ws:1", tmux_target="s").full_clean()
    assert "websocket console has no tmux pane" in str(caught.value)


def test_expects_worker_only_for_working_non_umbrella_tickets():
    working = make_ticket(state=Ticket.State.IN_PROGRESS)
    review = make_ticket(state=Ticket.State.REVIEW)
    umbrella = make_ticket(state=Ticket.State.IN_PROGRESS, kind=Ticket.Kind.UMBRELLA)
    waiting = make_ticket(state=Ticket.State.WAITING)
    done = make_ticket(state=Ticket.State.DONE)
    assert set(Ticket.objects.expecting_worker()) == {working, review}
    assert [t.expects_worker for t in (working, review, umbrella, waiting, done)] == [True, True, False, False, False]


def test_pure_classifier_names_match_the_model_choices():
    names = {value for key, value in vars(liveness).items() if key.isupper() and isinstance(value, str)}
    reasons = {liveness.PERMISSION_PROMPT, liveness.ELICITATION, liveness.IDLE_PROMPT, liveness.USAGE_LIMIT,
               liveness.NO_PROGRESS, liveness.WORKING, liveness.NOT_OBSERVED, liveness.CLOCK_SKEW}  # fmt: skip
    actions = set(liveness.CONTROLLER_ACTIONS)
    states = {liveness.ALIVE, liveness.GONE, liveness.ZOMBIE, liveness.REUSED, liveness.DENIED, liveness.UNVERIFIABLE}
    classes = names - states - reasons
    assert classes - actions == set(RuntimeClass.values)
    assert reasons <= set(Reason.values)
    assert actions == set(Runtime.ControllerAction.values)


def test_str_is_cheap_and_identifying(django_assert_num_queries):
    runtime = make_runtime(handle="tmux:cr-mc-9")
    runtime = Runtime.objects.get(pk=runtime.pk)
    with django_assert_num_queries(0):
        assert str(runtime) == f"tmux:cr-mc-9 #{runtime.pk}"
        assert str(runtime.ticket_id)


def test_reason_vocabulary_covers_what_the_classifier_emits():
    emitted = {
        "controller-kill", "controller-complete", "host-silent", "recent-activity", "heartbeat-stale",
        "awaiting-start", "ticket-inactive", "start-timeout", "not-observed", "process-alive", "access-denied",
        "process-zombie", "pid-reused", "process-exited", "tmux-unreachable", "session-missing", "pane-alive",
        "pane-dead-signal", "pane-dead-exit", "clock-skew",
    }  # fmt: skip
    assert emitted <= set(Reason.values)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="a PostgreSQL table option")
def test_runtime_table_leaves_room_for_hot_updates():
    with connection.cursor() as cursor:
        cursor.execute("SELECT reloptions FROM pg_class WHERE relname = 'runtimes_runtime'")
        assert "fillfactor=70" in cursor.fetchone()[0]


def test_a_profile_model_must_be_an_exact_name():
    from runtimes.models import WorkerProfile

    with pytest.raises(ValidationError, match="is not a model name"):
        WorkerProfile(name="p", provider="codex", model="gpt 5").full_clean()
    WorkerProfile(name="p", provider="codex", model="gpt-5.5").full_clean()
