import json
import signal
import threading

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from runtimes.reconcile import (
    DatabaseGone,
    check_database_file,
    database_file_identity,
    drop_unusable_connections,
    reconcile,
)


class Command(BaseCommand):
    help = "Observe this host's runtimes once (or on a loop) and record every class change."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=None, help="Act as this host (default: CONTROLROOM_HOST).")
        parser.add_argument(
            "--json", dest="as_json", action="store_true", help="Print a machine-readable summary per pass."
        )
        parser.add_argument("--watch", action="store_true", help="Keep reconciling until SIGINT/SIGTERM.")
        parser.add_argument("--interval", type=float, default=30.0, help="Seconds between passes with --watch.")

    def handle(self, *args, host, as_json, watch, interval, **options):
        if interval <= 0:
            raise CommandError("--interval must be a positive number of seconds.")
        host = host or settings.CONTROLROOM_HOST
        if not watch:
            self._one_pass(host, as_json)
            return
        stop = threading.Event()
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            database_file = database_file_identity()
            while not stop.is_set():
                try:
                    check_database_file(database_file)
                except DatabaseGone as error:
                    raise CommandError(f"Stopping: {error}; nothing was written. Restore it and start again.") from None
                drop_unusable_connections()
                try:
                    self._one_pass(host, as_json)
                except CommandError as error:
                    self.stderr.write(str(error))
                stop.wait(interval)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.stdout.write("Stopped.")

    def _one_pass(self, host, as_json):
        try:
            summary = reconcile(host=host)
        except DatabaseError as error:
            raise CommandError(f"Reconcile pass failed, nothing was written: {error}") from error
        if as_json:
            self.stdout.write(json.dumps(summary.as_dict(), sort_keys=True))
        else:
            self.stdout.write(str(summary))
