from django.core.management.base import BaseCommand

from runtimes.management import runtime_for_handle
from runtimes.runs.controller import recover_runtime


class Command(BaseCommand):
    help = "Record that the controller completed a runtime's work (clears the ticket's failure banner)."

    def add_arguments(self, parser):
        parser.add_argument("handle")
        parser.add_argument("--host", default=None)
        parser.add_argument("--by", default="controller", help="Who recovered it (recorded in the ledger).")

    def handle(self, *args, handle, host, by, **options):
        runtime = runtime_for_handle(handle, host)
        if recover_runtime(runtime, by=by):
            self.stdout.write(f"{handle}: completed-by-controller; ticket {runtime.ticket.key}'s banner cleared.")
        else:
            self.stdout.write(f"{handle}: already completed by the controller; nothing changed.")
