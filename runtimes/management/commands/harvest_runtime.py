from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from runtimes.management import runtime_for_handle
from runtimes.observe import observe_one
from runtimes.runs.harvest import HarvestError, harvest


class Command(BaseCommand):
    help = "Read a finished runtime's output log and record how it ended (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("handle")
        parser.add_argument("--host", default=None)

    def handle(self, *args, handle, host, **options):
        runtime = runtime_for_handle(handle, host)
        try:
            written = harvest(runtime, observe_one(runtime), timezone.now(), settings.CONTROLROOM_HOST)
        except HarvestError as error:
            raise CommandError(str(error)) from None
        runtime.refresh_from_db()
        if not written:
            self.stdout.write(f"{handle}: already harvested ({runtime.exit_outcome or 'no outcome'}); nothing changed.")
            return
        self.stdout.write(f"{handle}: exited, {runtime.exit_outcome} ({runtime.class_reason}): {runtime.class_message}")
