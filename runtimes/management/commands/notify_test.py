import json

from django.core.management.base import BaseCommand, CommandError

from runtimes.notify import service
from runtimes.notify.models import NotificationChannel


class Command(BaseCommand):
    help = "Send a test notification now to CONTROLROOM_NOTIFY_URLS and the enabled channels (or the named ones)."

    def add_arguments(self, parser):
        parser.add_argument("--channel", action="append", default=None, help="Only this admin channel (repeatable).")
        parser.add_argument("--json", dest="as_json", action="store_true", help="Print one JSON object per channel.")

    def handle(self, *args, channel, as_json, **options):
        if channel:
            found = {c.name: c for c in NotificationChannel.objects.filter(name__in=channel)}
            missing = [name for name in channel if name not in found]
            if missing:
                raise CommandError(f"No notification channel named {', '.join(missing)}; see the admin's channels.")
            routes = [found[name].route() for name in dict.fromkeys(channel)]
        else:
            routes = service.routes()
        if not routes:
            raise CommandError("No channel: set CONTROLROOM_NOTIFY_URLS or add a channel in the admin.")
        deliveries = service.send_test(routes, sync=True)
        for d in deliveries:
            if as_json:
                self.stdout.write(json.dumps({"channel": d.target, "status": d.status, "error": d.error}))
            else:
                self.stdout.write(f"{d.target}: {d.status}" + (f" — {d.error}" if d.error else ""))
        failed = [d for d in deliveries if d.status != "sent"]
        if failed:
            raise CommandError(f"{len(failed)} of {len(deliveries)} channel(s) did not take the test notification.")
