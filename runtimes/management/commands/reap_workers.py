from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from runtimes.runs.controller import reap


class Command(BaseCommand):
    help = "Stop live workers of done/cancelled tickets and Control Room tmux sessions no runtime owns."

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="Only list what would be stopped.")
        parser.add_argument("--host", default=None, help="Act as this host (default: CONTROLROOM_HOST).")
        parser.add_argument("--tmux-socket", action="append", default=None, help="Also scan this socket (repeatable).")

    def handle(self, *args, dry_run, host, tmux_socket, **options):
        sockets = ["", *(tmux_socket or [])]  # the default server, and any named
        plan = reap(host or settings.CONTROLROOM_HOST, extra_sockets=sockets, dry_run=dry_run)
        if dry_run:
            for runtime in plan.runtimes:
                self.stdout.write(
                    f"would stop {runtime.handle} (ticket {runtime.ticket.key} is {runtime.ticket.state})"
                )
            for socket, session, _ in plan.orphans:
                self.stdout.write(f"would stop orphan session {session} on {socket or 'default'}")
            self._report_unmarked(plan)
            self.stdout.write(f"{len(plan.runtimes) + len(plan.orphans)} worker(s) would be stopped.")
            return
        for line in plan.done:
            self.stdout.write(line)
        self._report_unmarked(plan)
        for line in plan.failed:
            self.stderr.write(line)
        self.stdout.write(f"Stopped {len(plan.done)} worker(s).")
        if plan.failed:
            raise CommandError(f"{len(plan.failed)} worker(s) could not be stopped; see the lines above.")

    def _report_unmarked(self, plan):
        for socket, session in plan.unmarked:
            self.stdout.write(
                f"left alone: session {session} on {socket or 'default'} has no Control Room mark (not ours to stop)"
            )
