import os
import secrets
import subprocess
import sys

import pytest
from django.urls import reverse

from tests.clusters import ROOT


def manage(*args, **env):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "SECRET_KEY", "DEBUG"))}
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env={**base, **env}, capture_output=True, text=True
    )


def production_env(tmp_path):
    return {
        "SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "controlroom.example.com",
        "DATABASE_URL": f"sqlite:///{tmp_path}/prod.sqlite3",
    }


def test_check_deploy_passes_with_the_documented_production_environment(tmp_path):
    done = manage("check", "--deploy", "--fail-level", "WARNING", **production_env(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr


def test_secret_key_is_required_when_debug_is_off(tmp_path):
    env = production_env(tmp_path)
    del env["SECRET_KEY"]
    done = manage("check", **env)
    assert done.returncode != 0
    assert "SECRET_KEY is required when DEBUG is off" in done.stderr


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("DEBUG", "maybe", "DEBUG='maybe' is not a boolean"),
        ("CONTROLROOM_START_TIMEOUT", "soon", "CONTROLROOM_START_TIMEOUT='soon' is not a number"),
        ("CONTROLROOM_TMUX_TIMEOUT", "-1", "must be at least 0"),
        ("DATABASE_URL", "nonsense://x", "DATABASE_URL cannot be parsed"),
    ],
)
def test_garbage_settings_fail_loudly(tmp_path, name, value, message):
    done = manage("check", **{**production_env(tmp_path), name: value})
    assert done.returncode != 0
    assert message in done.stderr


@pytest.mark.django_db
def test_admin_pages_send_the_security_headers(client):
    response = client.get(reverse("admin:login"))
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["Cross-Origin-Opener-Policy"] == "same-origin"


def test_the_local_run_command_binds_to_loopback_only():
    script = (ROOT / "scripts" / "run-local").read_text()
    assert 'runserver "127.0.0.1:${port}"' in script
