from django.core.management.base import BaseCommand, CommandError

from runtimes.management import runtime_for_handle
from runtimes.runs.controller import ControllerError, StopState, stop_runtime


class Command(BaseCommand):
    help = "Stop a worker (SIGTERM, then SIGKILL after a grace) and record it as killed by the controller."

    def add_arguments(self, parser):
        parser.add_argument("handle")
        parser.add_argument("--host", default=None, help="The runtime's host, when the handle exists on several.")
        parser.add_argument("--by", default="controller", help="Who stopped it (recorded in the ledger).")

    def handle(self, *args, handle, host, by, **options):
        runtime = runtime_for_handle(handle, host)
        try:
            result = stop_runtime(runtime, by=by)
        except ControllerError as error:
            raise CommandError(str(error)) from None
        if result is None:
            self.stdout.write(f"{handle}: already {runtime.runtime_class}; nothing to stop.")
        elif result.state == StopState.REQUESTED:
            self.stdout.write(f"{handle}: stop requested (task {result.task_id}) — {result.message}")
        else:
            self.stdout.write(f"{handle}: killed-by-controller — {result.message}")
