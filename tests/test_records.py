"""Records nobody can forge: a verdict's run belongs to its ticket, the closer is whoever signed in
(or a command's --by), and every close, cancel and reopen stays on record."""

import pytest
from django.core.management import CommandError, call_command
from django.db import IntegrityError, transaction
from django.urls import reverse
from django.utils import timezone

from runtimes import ledger
from runtimes.models import LivenessEvent, Runtime, RuntimeClass
from runtimes.runs import controller
from tests.conftest import make_runtime, make_ticket
from tests.test_roles import login_as, ticket_post, verdict_post
from tickets.models import Ticket, TicketEvent, Verdict

pytestmark = pytest.mark.django_db


def history(ticket):
    return list(
        TicketEvent.objects.filter(ticket=ticket).order_by("at", "pk").values_list("from_state", "to_state", "by")
    )


def test_the_database_refuses_a_verdict_naming_a_run_of_another_ticket():
    mine, other = make_ticket(), make_ticket()
    their_run = make_runtime(ticket=other)
    with pytest.raises(IntegrityError), transaction.atomic():
        Verdict.objects.create(ticket=mine, runtime=their_run, gate="coder", outcome="done")
    honest = Verdict.objects.create(ticket=mine, gate="coder", outcome="done")
    with pytest.raises(IntegrityError), transaction.atomic():
        Verdict.objects.filter(pk=honest.pk).update(runtime=their_run)
    assert not their_run.verdicts.exists()


def test_the_database_refuses_moving_a_run_away_from_the_ticket_of_its_verdict():
    ticket, elsewhere = make_ticket(), make_ticket()
    run = make_runtime(ticket=ticket)
    Verdict.objects.create(ticket=ticket, runtime=run, gate="coder", outcome="done")
    with pytest.raises(IntegrityError), transaction.atomic():
        Runtime.objects.filter(pk=run.pk).update(ticket=elsewhere)
    assert Runtime.objects.get(pk=run.pk).ticket_id == ticket.pk


def test_the_admin_refuses_a_verdict_for_another_tickets_run_and_the_workers_own_verdict_still_lands(client):
    login_as(client, "operators")
    victim, forger = make_ticket(), make_ticket()
    run = make_runtime(ticket=victim, runtime_class=RuntimeClass.TMUX_LIVE)
    response = client.post(
        reverse("admin:tickets_verdict_add"), {**verdict_post(forger, "coder", "done"), "runtime": run.pk}
    )
    assert response.status_code == 200
    assert f"Runtime {run.handle} worked on another ticket" in response.content.decode()
    assert not Verdict.objects.exists()
    # The run's one verdict slot is still free for the worker's real verdict.
    transition = ledger.Transition(run, RuntimeClass.EXITED, "completed", "done", LivenessEvent.Source.HARVEST)
    transition.verdict, transition.updates = "review", {"exit_outcome": "completed"}
    ledger.apply([transition], run.started_at, "test-host")
    assert list(run.verdicts.values_list("ticket_id", "outcome")) == [(victim.pk, "review")]


def test_the_ticket_page_refuses_an_inline_verdict_naming_another_tickets_run(client):
    login_as(client, "operators")
    ticket, other = make_ticket(), make_ticket()
    their_run = make_runtime(ticket=other)
    data = ticket_post(ticket, **{
        "verdicts-TOTAL_FORMS": "1", "verdicts-0-gate": "coder", "verdicts-0-outcome": "done",
        "verdicts-0-summary": "", "verdicts-0-author": "", "verdicts-0-commit_sha": "",
        "verdicts-0-runtime": str(their_run.pk),
    })  # fmt: skip
    response = client.post(reverse("admin:tickets_ticket_change", args=[ticket.pk]), data)
    assert response.status_code == 200 and "worked on another ticket" in response.content.decode()
    assert not Verdict.objects.exists()


def test_the_closer_is_the_signed_in_validator_never_the_verdicts_free_text_author(client):
    user = login_as(client, "validators")
    ticket = make_ticket(failure_reason="old failure")
    data = {**verdict_post(ticket, "validator", "approved"), "author": "the-ceo"}
    assert client.post(reverse("admin:tickets_verdict_add"), data).status_code == 302
    ticket.refresh_from_db()
    assert (ticket.state, ticket.closed_by, ticket.failure_reason) == ("done", user.username, "")
    verdict = ticket.verdicts.get()
    assert (verdict.author, verdict.recorded_by) == ("the-ceo", user.username)
    assert history(ticket) == [("in_progress", "done", user.username)]


def test_a_verdict_added_on_the_ticket_page_is_recorded_by_the_signed_in_user(client):
    user = login_as(client, "validators")
    ticket = make_ticket()
    data = ticket_post(ticket, **{
        "verdicts-TOTAL_FORMS": "1", "verdicts-0-gate": "validator", "verdicts-0-outcome": "approved",
        "verdicts-0-summary": "", "verdicts-0-author": "someone-else", "verdicts-0-commit_sha": "",
        "verdicts-0-runtime": "",
    })  # fmt: skip
    assert client.post(reverse("admin:tickets_ticket_change", args=[ticket.pk]), data).status_code == 302
    ticket.refresh_from_db()
    assert (ticket.state, ticket.closed_by) == ("done", user.username)
    assert ticket.verdicts.get().recorded_by == user.username


def test_the_database_refuses_a_closing_verdict_that_names_no_recorder():
    ticket = make_ticket()
    with pytest.raises(IntegrityError), transaction.atomic():
        Verdict.objects.create(ticket=ticket, gate="validator", outcome="approved", author="qa-bot")
    ticket.refresh_from_db()
    assert (ticket.state, ticket.closed_by) == ("in_progress", "")


def test_cancel_and_reopen_in_the_admin_record_who_and_when_and_erase_nothing(client):
    user = login_as(client, "operators")
    ticket = make_ticket()
    url = reverse("admin:tickets_ticket_change", args=[ticket.pk])
    assert client.post(url, ticket_post(ticket, state="cancelled")).status_code == 302
    ticket.refresh_from_db()
    assert (ticket.state, ticket.closed_by) == ("cancelled", user.username) and ticket.closed_at is not None
    assert client.post(url, ticket_post(ticket, state="in_progress")).status_code == 302
    ticket.refresh_from_db()
    assert (ticket.state, ticket.closed_at, ticket.closed_by) == ("in_progress", None, "")
    assert history(ticket) == [("in_progress", "cancelled", user.username), ("cancelled", "in_progress", user.username)]
    page = client.get(url).content.decode()
    assert "State history" in page and page.count(user.username) >= 2


def test_a_ticket_edit_that_keeps_its_state_adds_no_history(client):
    login_as(client, "operators")
    ticket = make_ticket()
    assert (
        client.post(
            reverse("admin:tickets_ticket_change", args=[ticket.pk]), ticket_post(ticket, title="new")
        ).status_code
        == 302
    )
    assert history(ticket) == []


def test_move_ticket_closes_cancels_and_reopens_as_by(capsys):
    ticket = make_ticket()
    call_command("move_ticket", ticket.key, "done", "--by", "maria")
    call_command("move_ticket", ticket.key, "in_progress", "--by", "sam")
    call_command("move_ticket", ticket.key, "cancelled", "--by", "li")
    call_command("move_ticket", ticket.key, "cancelled", "--by", "li")
    out = capsys.readouterr().out
    assert f"{ticket.key}: in_progress → done by maria." in out and "already cancelled; nothing changed" in out
    ticket.refresh_from_db()
    assert (ticket.state, ticket.closed_by) == ("cancelled", "li")
    assert history(ticket) == [
        ("in_progress", "done", "maria"),
        ("done", "in_progress", "sam"),
        ("in_progress", "cancelled", "li"),
    ]


def test_move_ticket_refuses_an_unknown_ticket_and_a_blank_closer():
    ticket = make_ticket()
    with pytest.raises(CommandError, match="No ticket 'MC-999999'"):
        call_command("move_ticket", "MC-999999", "done", "--by", "maria")
    with pytest.raises(CommandError, match="--by must name who"):
        call_command("move_ticket", ticket.key, "done", "--by", "  ")
    assert Ticket.objects.get(pk=ticket.pk).state == "in_progress" and history(ticket) == []


def test_a_second_seed_demo_keeps_what_operators_did():
    call_command("seed_demo")
    missing = Runtime.objects.get(handle="tmux:cr-mc-4506")
    controller.recover_runtime(missing, by="maria")
    live = Runtime.objects.get(handle="tmux:cr-mc-4502-b7")
    ledger.apply(
        [ledger.Transition(live, RuntimeClass.KILLED_BY_CONTROLLER, "controller-kill", "stopped", "controller")],
        timezone.now(), "demo-a",
    )  # fmt: skip
    Ticket.objects.get(key="MC-4503").move_to(Ticket.State.CANCELLED, by="ops")
    before = {r.handle: (r.runtime_class, r.events.count()) for r in Runtime.objects.all()}

    call_command("seed_demo")

    after = {r.handle: (r.runtime_class, r.events.count()) for r in Runtime.objects.all()}
    assert after == before
    assert after["tmux:cr-mc-4506"][0] == "completed-by-controller"
    assert after["tmux:cr-mc-4502-b7"][0] == "killed-by-controller"
    for handle in ("tmux:cr-mc-4506", "tmux:cr-mc-4502-b7"):
        last = Runtime.objects.get(handle=handle).events.order_by("-at", "-pk").first()
        assert last.source == "controller" and last.to_class == after[handle][0]
    assert Ticket.objects.get(key="MC-4503").state == "cancelled"
    assert Ticket.objects.get(key="MC-4506").failure_reason == ""
