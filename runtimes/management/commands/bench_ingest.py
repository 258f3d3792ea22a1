import json

from django.core.management.base import BaseCommand, CommandError

from runtimes.bench import ingest as bench


class Command(BaseCommand):
    help = "Benchmark the ingest API on a throwaway database: reports/s and POST-to-ledger latency; print a table."

    def add_arguments(self, parser):
        parser.add_argument("--reports", type=int, default=3000, help="Reports to post (each one a ledger row).")
        parser.add_argument("--runtimes", type=int, default=50, help="Runtimes the reports go to, round-robin.")
        parser.add_argument("--port", type=int, default=8765, help="Loopback port for the benchmark's server.")
        parser.add_argument("--clients", type=int, default=16, help="Concurrent clients in the second run.")
        parser.add_argument("--threads", type=int, default=16, help="The server's threads (one process).")
        parser.add_argument("--json", dest="json_path", default="", help="Also write the figures to this file.")

    def handle(self, *args, reports, runtimes, port, clients, threads, json_path, **options):
        if reports < 100 or runtimes < 1 or not 1024 <= port <= 65535:
            raise CommandError("--reports must be at least 100, --runtimes at least 1, --port 1024-65535.")
        if not 1 <= clients <= runtimes or not 1 <= threads <= 256:
            raise CommandError("--clients must be 1 to --runtimes (each has runtimes of its own), --threads 1-256.")
        figures = bench.run(reports, runtimes, port, clients, threads, stdout=self.stdout)
        self.stdout.write(bench.report(figures))
        if json_path:
            with open(json_path, "w") as handle:
                json.dump(figures, handle, indent=2)
            self.stdout.write(f"Figures written to {json_path}")
        if figures["lost"] or figures["failures"]:
            raise CommandError(f"{figures['lost']} report(s) lost, {figures['failures']} failed.")
