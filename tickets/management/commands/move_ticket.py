from django.core.management.base import BaseCommand, CommandError

from tickets.models import Ticket


class Command(BaseCommand):
    help = "Move a ticket to another state (close, cancel, reopen) as --by; recorded in its history."

    def add_arguments(self, parser):
        parser.add_argument("key", help="The ticket key, e.g. MC-4502.")
        parser.add_argument("state", choices=Ticket.State.values)
        parser.add_argument("--by", required=True, help="Who makes the change (recorded as the closer and in history).")

    def handle(self, *args, key, state, by, **options):
        by = by.strip()
        if not by:
            raise CommandError("--by must name who makes the change.")
        try:
            ticket = Ticket.objects.get(key=key)
        except Ticket.DoesNotExist:
            raise CommandError(f"No ticket {key!r}: check the key (e.g. MC-4502).") from None
        previous = ticket.state
        if ticket.move_to(Ticket.State(state), by=by[:150]) is None:
            self.stdout.write(f"{key} is already {state}; nothing changed.")
            return
        self.stdout.write(f"{key}: {previous} → {state} by {by}.")
