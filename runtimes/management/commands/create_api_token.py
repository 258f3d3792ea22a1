from django.core.management.base import BaseCommand, CommandError

from runtimes.intake import tokens
from runtimes.models import ApiToken


class Command(BaseCommand):
    help = "Create an ingest API token; prints the token (shown once, only its hash is kept) on its last line."

    def add_arguments(self, parser):
        parser.add_argument("name", help="Who uses the token, e.g. hermes-h1.")
        parser.add_argument("--role", choices=ApiToken.Role.values, default=ApiToken.Role.REPORTER)
        parser.add_argument("--host", default="", help="Bind the token to this host's runtimes.")

    def handle(self, *args, name, role, host, **options):
        name, host = name.strip(), host.strip()
        if not name or len(name) > 100:
            raise CommandError("Give the token a name of 1 to 100 characters, e.g. hermes-h1.")
        if len(host) > 255:
            raise CommandError("--host is at most 255 characters.")
        row, token = tokens.mint(name, role=role, host=host)
        scope = f"host {host}" if host else "any host"
        self.stdout.write(f"Created {role} token #{row.pk} {name!r} for {scope}. It is shown only now:")
        self.stdout.write(token)
