from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from runtimes.schedules import ensure_reconcile_schedule


class Command(BaseCommand):
    help = "Register this host's reconcile schedule in django-q2 (idempotent, by name)."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=None, help="Host name to register (default: CONTROLROOM_HOST).")
        parser.add_argument("--minutes", type=int, default=None, help="Interval in minutes (default: settings).")

    def handle(self, *args, host, minutes, **options):
        if minutes is not None and minutes < 1:
            raise CommandError("--minutes must be a whole number of minutes, 1 or more.")
        schedule, created = ensure_reconcile_schedule(host=host or settings.CONTROLROOM_HOST, minutes=minutes)
        verb = "Created" if created else "Updated"
        self.stdout.write(
            f"{verb} schedule {schedule.name!r}: every {schedule.minutes} min on cluster {schedule.cluster!r}."
        )
