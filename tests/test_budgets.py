"""Spend per ticket, profile and day, and budgets that stop a launch (never a run in flight)."""

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.core.management import CommandError, call_command
from django.urls import reverse

from runtimes.models import Runtime, WorkerProfile
from runtimes.notify import service as notify
from runtimes.reconcile import reconcile
from runtimes.runs import budgets
from tests.conftest import make_runtime, make_ticket, wait_for
from tests.test_dispatch import launch_args as launch_args  # a fixture
from tests.test_dispatch import model_calls, sessions

pytestmark = pytest.mark.django_db


@pytest.fixture
def warnings(monkeypatch):
    sent = []
    monkeypatch.setattr(notify, "budget_warning", lambda key, title, body, now=None: sent.append((key, title, body)))
    return sent


def launch_and_harvest(fake_bin, launch_args, ticket, profile):
    before = Runtime.objects.count()
    call_command("launch_worker", *launch_args(ticket, profile))
    runtime = Runtime.objects.order_by("-pk").first()
    assert Runtime.objects.count() == before + 1
    assert wait_for(lambda: (reconcile(), Runtime.objects.get(pk=runtime.pk).runtime_class == "exited")[1])
    return Runtime.objects.get(pk=runtime.pk)


def test_a_profile_daily_budget_refuses_the_launch_at_exactly_the_limit_and_nothing_starts(
    fake_bin, launch_args, tmux, warnings, django_capture_on_commit_callbacks
):
    WorkerProfile.objects.create(name="opus", provider="claude", model="claude-cost-2.50", daily_budget_usd=5)
    ticket = make_ticket()
    with django_capture_on_commit_callbacks(execute=True):
        first = launch_and_harvest(fake_bin, launch_args, ticket, "opus")
    assert first.cost_usd == Decimal("2.5") and warnings == []  # 50%: no warning yet
    with django_capture_on_commit_callbacks(execute=True):
        launch_and_harvest(fake_bin, launch_args, ticket, "opus")  # 2.50 spent < 5.00: allowed
    # The second run's cost brought the spend to the budget: one warning for today's budget.
    today = date.today().isoformat()
    assert [key for key, _, _ in warnings] == [f"budget:profile:opus:daily:{today}"]
    assert warnings[0][1] == "Budget 100% spent: profile opus's daily budget"
    calls_before, sessions_before = len(model_calls(fake_bin)), sorted(sessions(tmux))
    with pytest.raises(CommandError) as refused:
        call_command("launch_worker", *launch_args(ticket, "opus"))
    assert str(refused.value) == (
        f"Refused to launch opus on {ticket.key}: profile opus's daily budget is $5.00 and $5.00 is spent."
    )
    assert Runtime.objects.count() == 2
    assert (len(model_calls(fake_bin)), sorted(sessions(tmux))) == (calls_before, sessions_before)


def test_a_ticket_total_budget_counts_every_day_and_never_stops_a_run_in_flight(warnings):
    profile = WorkerProfile.objects.create(name="sonnet", provider="claude", model="claude-sonnet-4-6")
    ticket = make_ticket(total_budget_usd=Decimal("3.00"))
    make_runtime(ticket=ticket, cost_usd=Decimal("2.00"), started_at=datetime(2026, 1, 1, tzinfo=UTC))
    live = make_runtime(ticket=ticket, runtime_class="tmux-live", cost_usd=None)  # unknown cost counts as nothing
    budgets.check_launch(ticket, profile)  # 2.00 of 3.00 (66%): allowed, no warning
    assert warnings == []
    make_runtime(ticket=ticket, cost_usd=Decimal("0.40"))
    budgets.check_launch(ticket, profile)  # 2.40 of 3.00 = 80%: allowed, with a warning
    assert [key for key, _, _ in warnings] == [f"budget:ticket:{ticket.key}:total"]
    make_runtime(ticket=ticket, cost_usd=Decimal("0.60"))
    with pytest.raises(budgets.BudgetReached, match=r"ticket MC-\d+'s total budget is \$3.00 and \$3.00 is spent"):
        budgets.check_launch(ticket, profile)
    live.refresh_from_db()
    assert live.runtime_class == "tmux-live"


def test_spend_sums_per_day_split_at_midnight_and_today_starts_again_after_it():
    profile = WorkerProfile.objects.create(name="opus", provider="claude", model="m", daily_budget_usd=Decimal("1"))
    ticket = make_ticket()
    late = datetime(2026, 11, 25, 23, 30, tzinfo=UTC)
    make_runtime(ticket=ticket, profile="opus", cost_usd=Decimal("1.00"), started_at=late)
    make_runtime(ticket=ticket, profile="opus", cost_usd=Decimal("0.25"), started_at=late + timedelta(hours=1))
    make_runtime(ticket=ticket, profile="opus", cost_usd=None, started_at=late + timedelta(hours=2))
    before_midnight = time_machine.travel(datetime(2026, 11, 25, 23, 59, tzinfo=UTC), tick=False)
    with before_midnight, pytest.raises(budgets.BudgetReached):
        budgets.check_launch(ticket, profile)
    with time_machine.travel(datetime(2026, 11, 26, 3, 0, tzinfo=UTC), tick=False):
        assert budgets.spend(Runtime.objects.filter(profile="opus")) == (Decimal("0.25"), Decimal("1.25"))
        budgets.check_launch(ticket, profile)  # a new day: 0.25 of 1.00
        series = budgets.per_day(Runtime.objects.all(), days=3)
    assert [(day, spent, priced, runs) for day, spent, priced, runs in series] == [
        (date(2026, 11, 24), Decimal("0"), 0, 0),
        (date(2026, 11, 25), Decimal("1.00"), 1, 1),
        (date(2026, 11, 26), Decimal("0.25"), 1, 2),
    ]


def test_the_spend_page_sums_per_day_profile_and_ticket_with_a_chart_in_constant_queries(
    admin_client, django_assert_max_num_queries
):
    WorkerProfile.objects.create(name="opus", provider="claude", model="m", daily_budget_usd=Decimal("7.50"))
    ticket = make_ticket(total_budget_usd=Decimal("20"))
    make_runtime(ticket=ticket, profile="opus", cost_usd=Decimal("1.25"))
    make_runtime(ticket=ticket, profile="opus", cost_usd=Decimal("2.00"))
    make_runtime(profile="<b>codex</b>", cost_usd=None)
    url = reverse("admin:runtimes_runtime_spend")
    with django_assert_max_num_queries(12):
        page = admin_client.get(url).content.decode()
    assert page.count("<rect ") == 30 and f"{date.today():%Y-%m-%d}: $3.25 (3 runs)" in page
    assert "<td>opus</td><td>3.25</td><td>7.50</td><td>3.25</td>" in page
    assert f">{ticket.key}</a></td><td>3.25</td><td>3.25</td><td>20.00</td><td>2</td>" in page
    assert "&lt;b&gt;codex&lt;/b&gt;" in page and "<b>codex</b>" not in page
    for _ in range(5):
        make_runtime(ticket=make_ticket(), profile="sonnet", cost_usd=Decimal("0.10"))
    with django_assert_max_num_queries(12):
        assert admin_client.get(url).status_code == 200
    assert 'href="/admin/runtimes/runtime/spend/"' in admin_client.get(reverse("admin:index")).content.decode()
