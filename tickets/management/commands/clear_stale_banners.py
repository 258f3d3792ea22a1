from django.core.management.base import BaseCommand
from django.db import transaction

from tickets.models import Ticket


class Command(BaseCommand):
    help = "Clear failure banners left on tickets that are already done or cancelled."

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="Only say how many would be cleared.")

    def handle(self, *args, dry_run, **options):
        stale = Ticket.objects.stale_banners()
        if dry_run:
            keys = list(stale.values_list("key", flat=True))
            self.stdout.write(f"Would clear {len(keys)} stale banner(s): {', '.join(keys) or 'none'}.")
            return
        with transaction.atomic():
            cleared = stale.update(failure_reason="")
        self.stdout.write(f"Cleared {cleared} stale banner(s).")
