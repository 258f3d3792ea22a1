from django.core.management.base import BaseCommand, CommandError

from runtimes.bench import detection as bench


class Command(BaseCommand):
    help = "Benchmark kill → ledger row latency of the watcher against the schedule; print a table, write JSON."

    def add_arguments(self, parser):
        parser.add_argument("--sizes", default="20,200,1000", help="Watched workers per run, comma-separated.")
        parser.add_argument("--idle-seconds", type=float, default=60.0, help="How long to measure idle CPU.")
        parser.add_argument("--json", dest="json_path", default="bench-detection.json", help="Where to write figures.")

    def handle(self, *args, sizes, idle_seconds, json_path, **options):
        try:
            size_list = [int(s) for s in sizes.split(",") if s.strip()]
        except ValueError:
            raise CommandError(f"--sizes {sizes!r}: give whole numbers separated by commas, e.g. 20,200.") from None
        if not size_list or min(size_list) < 2:
            raise CommandError("--sizes must be 2 or more each.")
        if idle_seconds <= 0:
            raise CommandError("--idle-seconds must be a positive number of seconds.")
        figures = bench.run(size_list, idle_seconds, stdout=self.stdout)
        self.stdout.write(bench.report(figures))
        bench.write_json(figures, json_path)
        self.stdout.write(f"\nFigures written to {json_path}")
