from django.core.management.base import BaseCommand, CommandError

from runtimes.bench import reconcile as bench


class Command(BaseCommand):
    help = "Benchmark reconcile passes and admin pages on a throwaway database; print a table, write JSON."

    def add_arguments(self, parser):
        parser.add_argument("--sizes", default="100,500,1000", help="Active runtimes per run, comma-separated.")
        parser.add_argument("--history", type=int, default=100_000, help="Historical runtimes.")
        parser.add_argument("--events", type=int, default=1_000_000, help="Historical ledger events.")
        parser.add_argument("--repeats", type=int, default=5, help="Timed repeats per figure (median).")
        parser.add_argument("--no-admin", action="store_true", help="Skip the admin section.")
        parser.add_argument("--json", dest="json_path", default="bench-results.json", help="Where to write figures.")

    def handle(self, *args, sizes, history, events, repeats, no_admin, json_path, **options):
        try:
            size_list = [int(s) for s in sizes.split(",") if s.strip()]
        except ValueError:
            raise CommandError(f"--sizes {sizes!r}: give whole numbers separated by commas, e.g. 100,500.") from None
        if not size_list or min(size_list) < 2 or history < 10 or repeats < 1:
            raise CommandError("--sizes must be 2 or more each, --history at least 10, --repeats at least 1.")
        figures = bench.run(size_list, history, events, repeats, admin=not no_admin, stdout=self.stdout)
        self.stdout.write(bench.report(figures))
        bench.write_json(figures, json_path)
        self.stdout.write(f"\nFigures written to {json_path}")
