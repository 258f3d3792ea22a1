from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from runtimes.watch.watcher import Watcher


class Command(BaseCommand):
    help = "Watch this host's live runtimes by pidfd and tmux events; record each end within milliseconds."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=None, help="Act as this host (default: CONTROLROOM_HOST).")

    def handle(self, *args, host, **options):
        host = host or settings.CONTROLROOM_HOST
        if not host.strip():
            raise CommandError("--host must name a host.")

        def write(line):
            self.stdout.write(line)
            self.stdout.flush()

        try:
            Watcher(host, write=write).run()
        except DatabaseError as error:
            raise CommandError(f"The watcher cannot reach the database: {error}") from error
        except OSError as error:
            raise CommandError(f"The watcher cannot start: {error}") from error
