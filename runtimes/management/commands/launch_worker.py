from django.core.management.base import BaseCommand, CommandError

from runtimes.runs.dispatch import DispatchError, LaunchRequest, launch


class Command(BaseCommand):
    help = "Smoke-test a profile's exact model, then start a worker for a ticket in a new tmux session."

    def add_arguments(self, parser):
        parser.add_argument("ticket", help="Ticket key, e.g. MC-4502.")
        parser.add_argument("--profile", required=True, help="Worker profile name.")
        parser.add_argument("--cwd", required=True, help="The worker's working directory.")
        parser.add_argument("--prompt-file", required=True, help="File holding the prompt, passed to the CLI as is.")
        parser.add_argument("--tmux-socket", default="", help="tmux socket name or path (default server if blank).")

    def handle(self, *args, ticket, profile, cwd, prompt_file, tmux_socket, **options):
        request = LaunchRequest(ticket, profile, cwd, prompt_file, tmux_socket)
        try:
            runtime = launch(request)
        except DispatchError as error:
            raise CommandError(str(error)) from None
        self.stdout.write(
            f"Launched {runtime.handle} ({runtime.provider} {runtime.model}) for {runtime.ticket.key}: "
            f"pane pid {runtime.pid}, output {runtime.output_path}"
        )
