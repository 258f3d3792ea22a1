import json

from django.core.management.base import BaseCommand, CommandError

from runtimes.runs.dispatch import DispatchError, smoke_test


class Command(BaseCommand):
    help = "Run a CLI once with this exact model and record whether it works (exit 0 only if it does)."

    def add_arguments(self, parser):
        parser.add_argument("provider", help="claude or codex")
        parser.add_argument("model", help="The exact model name, e.g. gpt-5.5 or claude-opus-4-7.")
        parser.add_argument("--json", dest="as_json", action="store_true", help="Print the result as JSON.")

    def handle(self, *args, provider, model, as_json, **options):
        try:
            result = smoke_test(provider, model)
        except DispatchError as error:
            raise CommandError(str(error)) from None
        if as_json:
            fields = ("provider", "model", "auth_mode", "cli_version", "ok", "reason", "message", "duration_ms")
            payload = {name: getattr(result, name) for name in fields}
            self.stdout.write(json.dumps({**payload, "checked_at": result.checked_at.isoformat()}, sort_keys=True))
        else:
            verdict = "works" if result.ok else f"does NOT work ({result.reason})"
            auth = f", auth {result.auth_mode}" if result.auth_mode else ""
            self.stdout.write(f"{provider} {model}{auth}: {verdict} — {result.message} [{result.duration_ms} ms]")
        if not result.ok:
            raise SystemExit(1)
