import json
import sys

from django.core.management.base import BaseCommand, CommandError

from runtimes.runs import outcomes
from runtimes.runs.harvest import read_output, read_output_stream


class Command(BaseCommand):
    help = "Classify a Claude Code or Codex output log and print one JSON object."

    def add_arguments(self, parser):
        parser.add_argument("--provider", required=True, choices=("claude", "codex"))
        parser.add_argument("file", nargs="?", default="-", help="The output log, or - for standard input.")

    def handle(self, *args, provider, file, **options):
        if file == "-":
            raw = read_output_stream(sys.stdin.buffer)
        else:
            try:
                raw = read_output(file)
            except OSError as error:
                raise CommandError(
                    f"Cannot read {file}: {error.strerror}. Give a readable output log or - for stdin."
                ) from None
        outcome = outcomes.classify(provider, raw)
        self.stdout.write(json.dumps(outcome.as_dict(), ensure_ascii=False, sort_keys=True))
