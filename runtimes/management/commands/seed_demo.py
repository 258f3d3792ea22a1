from django.core.management.base import BaseCommand

from runtimes.demo import seed


class Command(BaseCommand):
    help = "Load realistic demo tickets, runtimes, verdicts and ledger events; only what is missing is created."

    def handle(self, *args, **options):
        tickets, runtimes = seed()
        self.stdout.write(
            f"Demo data ready: {tickets} ticket(s) and {runtimes} runtime(s) created, the rest left as they are."
        )
