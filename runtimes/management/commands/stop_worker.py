from django.core.management.base import BaseCommand, CommandError

from runtimes.management import runtime_for_handle
from runtimes.runs.controller import ControllerError, stop_runtime


class Command(BaseCommand):
    help = "Stop a worker (SIGTERM, then SIGKILL after a grace) and record it as killed by the controller."

    def add_arguments(self, parser):
        parser.add_argument("handle")
        parser.add_argument("--host", default=None)
        parser.add_argument("--by", default="controller", help="Who stopped it (recorded in the ledger).")

    def handle(self, *args, handle, host, by, **options):
        runtime = runtime_for_handle(handle, host)
        try:
            written = stop_runtime(runtime, by=by)
        except ControllerError as error:
            raise CommandError(str(error)) from None
        if written:
            self.stdout.write(f"{handle}: killed-by-controller — {written.message}")
        else:
            self.stdout.write(f"{handle}: already {runtime.runtime_class}; nothing to stop.")
