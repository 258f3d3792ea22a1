import json
import os
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from runtimes.intake import hermes
from tickets.models import Ticket


class Command(BaseCommand):
    help = "Mirror the running Hermes background processes of each home's processes.json as hermes-bg runtimes."

    def add_arguments(self, parser):
        parser.add_argument(
            "--home", action="append", default=[],
            help="A Hermes home (repeatable). Default: CONTROLROOM_HERMES_HOMES, else $HERMES_HOME or ~/.hermes.",
        )  # fmt: skip
        parser.add_argument("--ticket", default="", help="The ticket for entries that name none, e.g. MC-77.")
        parser.add_argument("--json", action="store_true", dest="as_json", help="Print the summary as JSON.")

    def handle(self, *args, home, ticket, as_json, **options):
        homes = home or settings.CONTROLROOM["HERMES_HOMES"] or [os.environ.get("HERMES_HOME") or "~/.hermes"]
        homes = [Path(h).expanduser() for h in homes]
        missing = [str(h) for h in homes if not h.is_dir()]
        if missing:
            raise CommandError(f"Not a directory: {', '.join(missing)} (give Hermes homes, e.g. ~/.hermes).")
        default = None
        if ticket:
            default = Ticket.objects.filter(key=ticket).first()
            if default is None:
                raise CommandError(f"No ticket {ticket!r}: check the key (like MC-4502).")
        summary = hermes.import_homes(homes, default)
        if as_json:
            self.stdout.write(json.dumps(summary.as_dict()))
        else:
            self.stdout.write(
                f"{summary.homes} home(s): {summary.created} new runtime(s), {summary.known} already known, "
                f"{len(summary.skipped)} skipped, {len(summary.errors)} unreadable file(s)."
            )
            for where, why in summary.skipped:
                self.stdout.write(f"  skipped {where}: {why}")
            for where, why in summary.errors:
                self.stderr.write(f"  {where}: {why}")
        if summary.errors:
            raise CommandError(f"{len(summary.errors)} processes.json file(s) could not be read.")
