import pytest
from django.contrib.auth.models import Group, User
from django.urls import reverse

from runtimes.models import Runtime, WorkerProfile
from tests.conftest import make_runtime, make_ticket
from tickets.models import Ticket, Verdict

pytestmark = pytest.mark.django_db


def login_as(client, role):
    user = User.objects.create_user(f"{role}-user", password="pw", is_staff=True)
    user.groups.add(Group.objects.get(name=role))
    client.force_login(user)
    return user


def verdict_post(ticket, gate, outcome):
    return {
        "ticket": ticket.pk, "gate": gate, "outcome": outcome, "summary": "looks good", "author": "",
        "commit_sha": "", "runtime": "",
    }  # fmt: skip


def ticket_post(ticket, **changes):
    data = {
        "key": ticket.key, "title": ticket.title, "description": "", "state": ticket.state, "kind": ticket.kind,
        "priority": ticket.priority, "owner": "", "parent": "", "failure_reason": ticket.failure_reason, "note": "",
        "verdicts-TOTAL_FORMS": "0", "verdicts-INITIAL_FORMS": "0", "runtimes-TOTAL_FORMS": "0",
        "runtimes-INITIAL_FORMS": "0", "history-TOTAL_FORMS": "0", "history-INITIAL_FORMS": "0",
    }  # fmt: skip
    data.update(changes)
    return data


def test_the_migration_creates_the_three_roles():
    assert set(Group.objects.values_list("name", flat=True)) >= {"viewers", "operators", "validators"}


def test_viewers_can_read_everything_and_change_nothing(client):
    login_as(client, "viewers")
    ticket = make_ticket()
    runtime = make_runtime(ticket=ticket, runtime_class="tmux-live")
    for name in ("tickets_ticket", "runtimes_runtime", "runtimes_livenessevent", "runtimes_workerprofile"):
        assert client.get(reverse(f"admin:{name}_changelist")).status_code == 200
    assert client.get(reverse("admin:tickets_ticket_add")).status_code == 403
    response = client.post(reverse("admin:runtimes_runtime_changelist"),
                           {"action": "stop_workers", "_selected_action": [runtime.pk]})  # fmt: skip
    assert Runtime.objects.get(pk=runtime.pk).runtime_class == "tmux-live"
    assert response.status_code in (200, 302)
    response = client.post(reverse("admin:tickets_ticket_change", args=[ticket.pk]), ticket_post(ticket, title="x"))
    assert response.status_code == 403


def test_operators_recover_workers_and_edit_profiles_but_cannot_close_tickets(client):
    login_as(client, "operators")
    ticket = make_ticket(failure_reason="tmux:cr-1: session missing")
    runtime = make_runtime(ticket=ticket, runtime_class="tmux-missing")
    response = client.post(reverse("admin:runtimes_runtime_changelist"),
                           {"action": "recover_workers", "_selected_action": [runtime.pk]}, follow=True)  # fmt: skip
    assert "Recovered 1 runtime(s)." in response.content.decode()
    assert Ticket.objects.get(pk=ticket.pk).failure_reason == ""

    response = client.post(reverse("admin:runtimes_workerprofile_add"), {
        "name": "codex_fast", "provider": "codex", "model": "gpt-5.4-mini", "effort": "", "extra_args": "[]",
        "enabled": "on",
    })  # fmt: skip
    assert response.status_code == 302 and WorkerProfile.objects.filter(name="codex_fast").exists()

    response = client.post(reverse("admin:tickets_verdict_add"), verdict_post(ticket, "validator", "approved"))
    assert "Only validators may record a validator verdict" in response.content.decode()
    response = client.post(reverse("admin:tickets_ticket_change", args=[ticket.pk]), ticket_post(ticket, state="done"))
    assert "Only validators may close a ticket" in response.content.decode()
    ticket.refresh_from_db()
    assert ticket.state == "in_progress" and not Verdict.objects.exists()

    response = client.post(reverse("admin:tickets_verdict_add"), verdict_post(ticket, "coder", "done"))
    assert response.status_code == 302  # other verdicts are fine


def test_validators_close_tickets_with_a_verdict_and_the_banner_goes(client):
    login_as(client, "validators")
    ticket = make_ticket(failure_reason="old failure")
    response = client.post(reverse("admin:tickets_verdict_add"), verdict_post(ticket, "validator", "approved"))
    assert response.status_code == 302
    ticket.refresh_from_db()
    assert (ticket.state, ticket.failure_reason) == ("done", "")
    assert ticket.closed_at is not None
    runtime = make_runtime(runtime_class="tmux-live")
    client.post(
        reverse("admin:runtimes_runtime_changelist"), {"action": "stop_workers", "_selected_action": [runtime.pk]}
    )
    assert Runtime.objects.get(pk=runtime.pk).runtime_class == "tmux-live"  # not an operator


def test_validators_may_close_a_ticket_from_its_form(client):
    user = login_as(client, "validators")
    ticket = make_ticket()
    response = client.post(reverse("admin:tickets_ticket_change", args=[ticket.pk]), ticket_post(ticket, state="done"))
    assert response.status_code == 302
    ticket.refresh_from_db()
    assert (ticket.state, ticket.closed_by) == ("done", user.username)
    assert ticket.closed_at is not None


def test_reopening_a_ticket_clears_its_closing_fields():
    ticket = make_ticket(state="done")
    ticket.state = Ticket.State.IN_PROGRESS
    ticket.save()
    ticket.refresh_from_db()
    assert (ticket.closed_at, ticket.closed_by) == (None, "")
