from django.core.management.base import BaseCommand, CommandError

from runtimes.management import runtime_for_handle
from runtimes.runs.resume import ResumeError, resume


class Command(BaseCommand):
    help = "Relaunch a usage-limited runtime with its CLI's resume form, as a new runtime linked to it."

    def add_arguments(self, parser):
        parser.add_argument("handle")
        parser.add_argument("--host", default=None)
        parser.add_argument("--by", default="controller", help="Who resumed it (recorded in the ledger).")

    def handle(self, *args, handle, host, by, **options):
        runtime = runtime_for_handle(handle, host)
        try:
            successor = resume(runtime, by=by)
        except ResumeError as error:
            raise CommandError(str(error)) from None
        self.stdout.write(
            f"{handle}: resumed by {by} as {successor.handle} (session {successor.agent_session_id}, "
            f"resume {successor.resume_count}); output {successor.output_path}"
        )
