"""Spend and budgets: what runs cost per ticket, profile and day, and the launch check.

A run's cost counts on the day it started (the server's TIME_ZONE); an unknown cost (blank)
counts as nothing and never as a guessed zero. A launch is refused once the profile's spend
today, the profile's total, the ticket's spend today or the ticket's total has reached its
budget; a run in flight is never stopped for it. At CONTROLROOM_BUDGET_WARN_AT (80%) of a budget
an operator notification goes out, once per budget and day.
"""

import logging
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from decimal import Decimal

from django.conf import settings
from django.db.models import Count, DecimalField, Q, Sum, Value
from django.db.models.functions import Coalesce, TruncDate
from django.utils import timezone

from runtimes.models import Runtime

logger = logging.getLogger(__name__)

ZERO = Decimal("0")


def day_bounds(now):
    """[start, end) of `now`'s day in the server's time zone, as aware datetimes."""
    local = timezone.localtime(now)
    start = timezone.make_aware(datetime.combine(local.date(), time.min), local.tzinfo)
    end = timezone.make_aware(datetime.combine(local.date() + timedelta(days=1), time.min), local.tzinfo)
    return start, end


def known_cost():
    """Sum of the known costs (0 when none is known)."""
    return Coalesce(Sum("cost_usd"), Value(ZERO), output_field=DecimalField(max_digits=14, decimal_places=6))


def spend(runtimes, now=None):
    """(spend today, spend in total) of a queryset of runtimes: one query."""
    start, end = day_bounds(now or timezone.now())
    today = Sum("cost_usd", filter=Q(started_at__gte=start, started_at__lt=end))
    sums = runtimes.aggregate(
        today=Coalesce(today, Value(ZERO), output_field=DecimalField(max_digits=14, decimal_places=6)),
        total=known_cost(),
    )
    return sums["today"], sums["total"]


def per_day(runtimes, days=30, now=None):
    """[(date, spend, runs with a known cost, runs)] for the last `days` days, oldest first (every
    day present). One query."""
    now = now or timezone.now()
    start, _ = day_bounds(now - timedelta(days=days - 1))
    rows = (
        runtimes.filter(started_at__gte=start)
        .annotate(day=TruncDate("started_at", tzinfo=timezone.get_current_timezone()))
        .values("day")
        .annotate(spend=known_cost(), priced=Count("cost_usd"), runs=Count("pk"))
        .order_by("day")
    )
    found = {row["day"]: row for row in rows}
    first = timezone.localtime(start).date()
    series = []
    for offset in range(days):
        day = first + timedelta(days=offset)
        row = found.get(day, {})
        series.append((day, row.get("spend", ZERO), row.get("priced", 0), row.get("runs", 0)))
    return series


@dataclass(frozen=True)
class Budget:
    label: str  # "profile opus's daily budget"
    key: str  # identifies the budget (and the day, for daily ones) for its one warning
    spent: Decimal
    limit: Decimal

    @property
    def reached(self):
        return self.spent >= self.limit

    @property
    def near(self):
        return self.spent >= self.limit * Decimal(str(settings.CONTROLROOM["BUDGET_WARN_AT"]))

    def describe(self):
        return f"{self.label} is ${self.limit:.2f} and ${self.spent:.2f} is spent"


def budgets_for(ticket, profile, now=None):
    """The budgets set on the ticket and the profile, with what is spent against each. Two queries."""
    now = now or timezone.now()
    day = timezone.localtime(now).date().isoformat()
    found = []
    for owner, label, runtimes in (
        (profile, f"profile {profile.name}", Runtime.objects.filter(profile=profile.name)),
        (ticket, f"ticket {ticket.key}", Runtime.objects.filter(ticket=ticket)),
    ):
        if owner.daily_budget_usd is None and owner.total_budget_usd is None:
            continue
        today, total = spend(runtimes, now)
        kind = "profile" if owner is profile else "ticket"
        name = profile.name if owner is profile else ticket.key
        if owner.daily_budget_usd is not None:
            found.append(Budget(f"{label}'s daily budget", f"budget:{kind}:{name}:daily:{day}", today,
                                owner.daily_budget_usd))  # fmt: skip
        if owner.total_budget_usd is not None:
            found.append(
                Budget(f"{label}'s total budget", f"budget:{kind}:{name}:total", total, owner.total_budget_usd)
            )
    return found


class BudgetReached(Exception):
    """A launch would spend past a budget already reached; the message names spend and budget."""


def check_launch(ticket, profile, now=None):
    """Refuse a launch once a budget is reached (BudgetReached); warn for budgets near their limit."""
    budgets = budgets_for(ticket, profile, now)
    reached = [b for b in budgets if b.reached]
    if reached:
        raise BudgetReached("; ".join(b.describe() for b in reached))
    warn([b for b in budgets if b.near], now)


def warn(budgets, now=None):
    """One operator notification per budget (and day) that is near or at its limit."""
    if not budgets:
        return
    from runtimes.notify import service as notify  # notifications are optional here

    for budget in budgets:
        share = int(budget.spent * 100 / budget.limit) if budget.limit else 100
        title = f"Budget {share}% spent: {budget.label}"
        try:
            notify.budget_warning(budget.key, title, budget.describe() + ".", now=now)
        except Exception:
            logger.exception("cannot send the budget warning %s", budget.key)


def warn_after_runs(runtime_ids, now=None):
    """After runs' costs are recorded: warn for the budgets of their tickets and profiles that are
    now near or at their limit (the ledger's hook; never fails the caller)."""
    from runtimes.models import WorkerProfile

    try:
        rows = list(Runtime.objects.filter(pk__in=runtime_ids, cost_usd__isnull=False).select_related("ticket"))
        profiles = {p.name: p for p in WorkerProfile.objects.filter(name__in={r.profile for r in rows})}
        seen, near = set(), []
        for runtime in rows:
            profile = profiles.get(runtime.profile) or _NoBudget(runtime.profile)
            for budget in budgets_for(runtime.ticket, profile, now):
                if budget.near and budget.key not in seen:
                    seen.add(budget.key)
                    near.append(budget)
        warn(near, now)
    except Exception:
        logger.exception("cannot check the budgets of runtimes %s", runtime_ids)


@dataclass(frozen=True)
class _NoBudget:
    name: str
    daily_budget_usd: Decimal | None = None
    total_budget_usd: Decimal | None = None


def grouped(runtimes, *fields, now=None):
    """Spend today and in total per value of `fields` (e.g. "profile"; "ticket", "ticket__key"),
    most spent first: rows of {fields…, today, total, runs}. One query."""
    start, end = day_bounds(now or timezone.now())
    money = DecimalField(max_digits=14, decimal_places=6)
    today = Sum("cost_usd", filter=Q(started_at__gte=start, started_at__lt=end))
    return (
        runtimes.values(*fields)
        .annotate(today=Coalesce(today, Value(ZERO), output_field=money), total=known_cost(), runs=Count("pk"))
        .order_by("-total", *fields)
    )


def chart(series, width=720, height=140):
    """Bars (x, y, width, height in px) for a per-day series, scaled to its largest day."""
    peak = max((spend for _, spend, _, _ in series), default=ZERO) or Decimal("1")
    slot = width / max(len(series), 1)
    bars = []
    for index, (day, spent, _, runs) in enumerate(series):
        bar_height = float(spent / peak) * (height - 20)
        bars.append({"x": round(index * slot + 1, 1), "y": round(height - bar_height, 1), "width": round(slot - 2, 1),
                     "height": round(bar_height, 1), "day": day, "spend": spent, "runs": runs})  # fmt: skip
    return bars, peak
