import pytest
from django.core.management import call_command

from runtimes.models import LivenessEvent, Runtime
from tickets.models import Ticket, Verdict

pytestmark = pytest.mark.django_db


def snapshot():
    return (Ticket.objects.count(), Runtime.objects.count(), Verdict.objects.count(), LivenessEvent.objects.count())


def test_seed_demo_is_idempotent_and_realistic(capsys):
    call_command("seed_demo")
    first = snapshot()
    call_command("seed_demo")
    assert snapshot() == first
    assert "0 ticket(s) and 0 runtime(s) created" in capsys.readouterr().out

    closed = Ticket.objects.get(key="MC-4491")
    assert (closed.state, closed.failure_reason) == ("done", "")
    assert closed.verdicts.filter(gate="validator", outcome="approved").exists()
    console = Runtime.objects.get(handle="ws:console-17")
    assert (console.ticket.key, console.ticket.state, console.runtime_class, console.tmux_target) == (
        "MC-4494", "waiting", "websocket-idle", ""
    )  # fmt: skip
    assert Ticket.objects.filter(kind="umbrella").exists()
    assert Runtime.objects.filter(handle__startswith="hermes-bg:proc_").count() == 2
    assert not Runtime.objects.needs_attention().filter(ticket__key="MC-4494").exists()
    assert all(r.events.exists() for r in Runtime.objects.all())


def test_ensure_local_admin_creates_a_login_once(settings, capsys):
    settings.DEBUG = True
    call_command("ensure_local_admin")
    created = capsys.readouterr().out
    assert created.startswith("admin / ") and "shown this once" in created
    call_command("ensure_local_admin")
    again = capsys.readouterr().out
    assert "created earlier" in again and "changepassword admin" in again
    assert created.split()[2] not in again
