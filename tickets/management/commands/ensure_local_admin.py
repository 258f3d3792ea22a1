import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Create a local superuser with a random password (printed once), for a DEBUG run only; prints one line."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")

    def handle(self, *args, username, **options):
        if not settings.DEBUG:
            raise CommandError("ensure_local_admin is for local runs (DEBUG=1); use createsuperuser in production.")
        users = get_user_model()
        if users.objects.filter(username=username).exists():
            self.stdout.write(
                f"{username} (created earlier; a new password: "
                f"DEBUG=1 .venv/bin/python manage.py changepassword {username})"
            )
            return
        password = secrets.token_urlsafe(12)
        users.objects.create_superuser(username=username, email="", password=password)
        self.stdout.write(f"{username} / {password}   (created now; the password is shown this once)")
