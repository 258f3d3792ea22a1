from datetime import datetime

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from runtimes.intake.activity import ActivityError, record_activity
from runtimes.management import runtime_for_handle


class Command(BaseCommand):
    help = "Record activity on a websocket console (older reports never overwrite newer ones)."

    def add_arguments(self, parser):
        parser.add_argument("handle", help="The console's handle, e.g. ws:console-17.")
        parser.add_argument("--at", default=None, help="When (ISO 8601 with a zone); default: now.")
        parser.add_argument("--host", default=None)

    def handle(self, *args, handle, at, host, **options):
        when = None
        if at:
            try:
                when = datetime.fromisoformat(at)
            except ValueError:
                raise CommandError(f"--at {at!r} is not an ISO 8601 time, e.g. 2026-11-24T10:00:00+00:00.") from None
            if timezone.is_naive(when):
                raise CommandError(f"--at {at!r} has no time zone; add one, e.g. +00:00.")
        runtime = runtime_for_handle(handle, host)
        try:
            newer = record_activity(runtime, when)
        except ActivityError as error:
            raise CommandError(str(error)) from None
        runtime.refresh_from_db()
        if newer:
            self.stdout.write(f"{handle}: activity recorded; {runtime.runtime_class}.")
        else:
            self.stdout.write(f"{handle}: a newer activity is already recorded; nothing changed.")
