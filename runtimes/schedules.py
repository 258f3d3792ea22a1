"""Register the per-host reconcile schedule in django-q2, idempotently, by name."""

from django.conf import settings
from django.db import transaction
from django_q.models import Schedule

from runtimes.tasks import schedule_name


def ensure_reconcile_schedule(host=None, minutes=None):
    """Create or update this host's schedule, targeted at this host's cluster. Returns (schedule, created)."""
    host = host or settings.CONTROLROOM_HOST
    minutes = minutes or settings.CONTROLROOM["RECONCILE_EVERY_MINUTES"]
    with transaction.atomic():
        return Schedule.objects.update_or_create(
            name=schedule_name(host),
            defaults={
                "func": "runtimes.tasks.reconcile_host",
                "kwargs": repr({"host": host}),
                "schedule_type": Schedule.MINUTES,
                "minutes": minutes,
                "repeats": -1,
                "cluster": host,
            },
        )
