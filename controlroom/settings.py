"""Control Room settings: one module, driven by environment variables.

Every variable is parsed strictly: a value that cannot be read raises ImproperlyConfigured at
start-up rather than being silently replaced by a default.
"""

import contextlib
import os
import socket
import zoneinfo
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_bool(name, default=False):
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean; use 1/0, true/false, yes/no or on/off.")


def env_number(name, default, cast=float, minimum=0):
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = cast(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a number.") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name}={raw!r} must be at least {minimum}.")
    return value


def env_list(name, default):
    raw = os.environ.get(name)
    if raw is None:
        return list(default)
    return [item.strip() for item in raw.split(",") if item.strip()]


DEBUG = env_bool("DEBUG", False)

SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY is required when DEBUG is off. Set SECRET_KEY to a long random string, "
            "or set DEBUG=1 for a local run."
        )
    SECRET_KEY = "django-insecure-local-development-only"  # noqa: S105  (DEBUG only)

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "controlroom.apps.ControlRoomAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django_q",
    "ninja",
    "tickets",
    "runtimes",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "controlroom.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "controlroom" / "templates", BASE_DIR / "runtimes" / "console" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
            "libraries": {"console": "runtimes.console.templatetags.console"},
        },
    },
]

WSGI_APPLICATION = "controlroom.wsgi.application"

# Database: DATABASE_URL, or an SQLite file inside the project (var/ is ignored by git).
VAR_DIR = Path(os.environ.get("CONTROLROOM_VAR_DIR", BASE_DIR / "var"))
_default_db = f"sqlite:///{VAR_DIR / 'controlroom.sqlite3'}"
try:
    DATABASES = {"default": dj_database_url.parse(os.environ.get("DATABASE_URL") or _default_db)}
except ValueError as error:
    raise ImproperlyConfigured(f"DATABASE_URL cannot be parsed: {error}") from None
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    # IMMEDIATE transactions take SQLite's write lock up front, so the reconciler's
    # read-compare-write happens under one lock; WAL lets the admin read meanwhile.
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": env_number("CONTROLROOM_SQLITE_TIMEOUT", 20.0),
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}
# Keep each thread's database connection between requests (a threaded server's threads live on; checked
# before reuse). 0 closes it after every request, Django's default.
DATABASES["default"]["CONN_MAX_AGE"] = env_number("CONN_MAX_AGE", 0, int)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", VAR_DIR / "static"))
# The console's own files (htmx, vendored from the npm package htmx.org; no CDN at run time).
STATICFILES_DIRS = [BASE_DIR / "runtimes" / "console" / "static"]

# Security headers; the production values are switched on whenever DEBUG is off.
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", not DEBUG)
SECURE_HSTS_SECONDS = env_number("SECURE_HSTS_SECONDS", 0 if DEBUG else 31536000, int)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", not DEBUG)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", not DEBUG)
if env_bool("BEHIND_TLS_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# ---------------------------------------------------------------------------------------------
# Control Room
# ---------------------------------------------------------------------------------------------

# This host's name: runtimes launched here carry it, and this host's reconciler probes only them.
CONTROLROOM_HOST = os.environ.get("CONTROLROOM_HOST", "").strip() or socket.gethostname()


def local_time_zone():
    """This host's IANA time zone: CONTROLROOM_HOST_TIME_ZONE, else TZ, /etc/timezone or the
    /etc/localtime link, else UTC. Worker CLIs print usage-limit resets in this zone."""
    name = os.environ.get("CONTROLROOM_HOST_TIME_ZONE", "").strip() or os.environ.get("TZ", "").lstrip(":").strip()
    explicit = bool(name)
    if not name:
        with contextlib.suppress(OSError):
            name = Path("/etc/timezone").read_text().strip()
    if not name:
        with contextlib.suppress(OSError):
            name = os.readlink("/etc/localtime").partition("zoneinfo/")[2]
    try:
        zoneinfo.ZoneInfo(name or "UTC")
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        if explicit:
            raise ImproperlyConfigured(f"{name!r} is not a time zone: use an IANA name like Europe/Lisbon.") from None
        name = ""
    return name or "UTC"


CONTROLROOM = {
    # Liveness thresholds (seconds).
    "START_TIMEOUT": env_number("CONTROLROOM_START_TIMEOUT", 120.0),
    "WEBSOCKET_IDLE_AFTER": env_number("CONTROLROOM_WEBSOCKET_IDLE_AFTER", 300.0),
    "UNKNOWN_GRACE": env_number("CONTROLROOM_UNKNOWN_GRACE", 300.0),
    "HOST_SILENT_AFTER": env_number("CONTROLROOM_HOST_SILENT_AFTER", 180.0),
    "LAST_SEEN_REFRESH": env_number("CONTROLROOM_LAST_SEEN_REFRESH", 30.0),
    "TMUX_TIMEOUT": env_number("CONTROLROOM_TMUX_TIMEOUT", 5.0),
    "RECONCILE_EVERY_MINUTES": env_number("CONTROLROOM_RECONCILE_EVERY_MINUTES", 1, int, 1),
    # Dispatch.
    "TMUX_BIN": os.environ.get("CONTROLROOM_TMUX_BIN", "tmux"),
    "CLAUDE_BIN": os.environ.get("CONTROLROOM_CLAUDE_BIN", "claude"),
    "CODEX_BIN": os.environ.get("CONTROLROOM_CODEX_BIN", "codex"),
    "SMOKE_TIMEOUT": env_number("CONTROLROOM_SMOKE_TIMEOUT", 60.0),
    "SMOKE_TTL": env_number("CONTROLROOM_SMOKE_TTL", 6 * 3600.0),
    "STOP_GRACE": env_number("CONTROLROOM_STOP_GRACE", 5.0),
    # Largest prompt file launch_worker accepts (bytes).
    "MAX_PROMPT_BYTES": env_number("CONTROLROOM_MAX_PROMPT_BYTES", 1024 * 1024, int, 1),
    "RUN_DIR": Path(os.environ.get("CONTROLROOM_RUN_DIR", VAR_DIR / "runs")),
    "CODEX_CHATGPT_UNSUPPORTED": env_list(
        "CONTROLROOM_CODEX_CHATGPT_UNSUPPORTED",
        ["codex-mini*", "o3", "o4-mini", "gpt-5-mini", "gpt-5.1-codex-mini", "gpt-5.2", "gpt-5.3-codex"],
    ),
    "CODEX_CHATGPT_SUGGESTED": env_list("CONTROLROOM_CODEX_CHATGPT_SUGGESTED", ["gpt-5.5", "gpt-5.4", "gpt-5.4-mini"]),
    # Self-reported states (seconds): see README "Workers report themselves".
    "IDLE_PROMPT_GRACE": env_number("CONTROLROOM_IDLE_PROMPT_GRACE", 600.0),
    "STALL_AFTER": env_number("CONTROLROOM_STALL_AFTER", 900.0),
    "USAGE_LIMIT_PAUSE": env_number("CONTROLROOM_USAGE_LIMIT_PAUSE", 3600.0),
    "USAGE_LIMIT_GRACE": env_number("CONTROLROOM_USAGE_LIMIT_GRACE", 600.0),
    # Hermes homes whose processes.json each reconcile pass mirrors (comma-separated; none: off).
    "HERMES_HOMES": env_list("CONTROLROOM_HERMES_HOMES", []),
    # The ingest API: the largest request body taken (bytes), and the URL workers report to.
    "API_MAX_BODY": env_number("CONTROLROOM_API_MAX_BODY", 1024 * 1024, int, 1),
    "URL": os.environ.get("CONTROLROOM_URL", "http://127.0.0.1:8000").strip().rstrip("/"),
    # Usage limits and resumes.
    "HOST_TIME_ZONE": local_time_zone(),
    "AUTO_RESUME": env_bool("CONTROLROOM_AUTO_RESUME", False),
    "MAX_RESUMES": env_number("CONTROLROOM_MAX_RESUMES", 3, int),
    "RESUME_SPREAD": env_number("CONTROLROOM_RESUME_SPREAD", 90.0),
    "RESUME_JITTER": env_number("CONTROLROOM_RESUME_JITTER", 30.0),
    "RESUME_PROMPT": os.environ.get("CONTROLROOM_RESUME_PROMPT", "continue"),
    "BUDGET_WARN_AT": env_number("CONTROLROOM_BUDGET_WARN_AT", 0.8),
    # Longest text taken from worker output into the ledger, a banner or a message.
    "MAX_MESSAGE_CHARS": env_number("CONTROLROOM_MAX_MESSAGE_CHARS", 2000, int, 80),
    # Notifications (runtimes/notify): Apprise URLs from the environment (secrets: never logged).
    "NOTIFY_URLS": env_list("CONTROLROOM_NOTIFY_URLS", []),
    "NOTIFY_QUIET": env_number("CONTROLROOM_NOTIFY_QUIET", 120.0),
    "NOTIFY_DIGEST_OVER": env_number("CONTROLROOM_NOTIFY_DIGEST_OVER", 5, int, 1),
    "NOTIFY_ATTEMPTS": env_number("CONTROLROOM_NOTIFY_ATTEMPTS", 5, int, 1),
    "PUBLIC_URL": os.environ.get("CONTROLROOM_PUBLIC_URL", "").strip().rstrip("/"),
    # The event-driven watcher (watch_runtimes): the unix datagram socket exec_worker reports exits
    # to and launches and registrations announce new runtimes to ("" turns it off), how long it
    # gathers a burst of events, how often it beats, polls what it holds no pidfd for and runs its
    # safety-net "changed since" query, and when the admin calls its heartbeat stale.
    "WATCH_SOCKET": os.environ.get("CONTROLROOM_WATCH_SOCKET", str(VAR_DIR / "run" / "watch.sock")),
    "WATCH_SETTLE_MS": env_number("CONTROLROOM_WATCH_SETTLE_MS", 5.0),
    "WATCH_HEARTBEAT": env_number("CONTROLROOM_WATCH_HEARTBEAT", 10.0, float, 0.1),
    "WATCH_POLL": env_number("CONTROLROOM_WATCH_POLL", 2.0, float, 0.1),
    "WATCH_SYNC": env_number("CONTROLROOM_WATCH_SYNC", 30.0, float, 0.1),
    "WATCH_STALE_AFTER": env_number("CONTROLROOM_WATCH_STALE_AFTER", 60.0, float, 1),
}
if CONTROLROOM["PUBLIC_URL"] and not CONTROLROOM["PUBLIC_URL"].startswith(("http://", "https://")):
    raise ImproperlyConfigured(
        f"CONTROLROOM_PUBLIC_URL={CONTROLROOM['PUBLIC_URL']!r} must start with http:// or https://."
    )

# Django reads at most this much of a request body; the API's own limit is checked first.
DATA_UPLOAD_MAX_MEMORY_SIZE = max(2_621_440, CONTROLROOM["API_MAX_BODY"])

# django-q2: the ORM broker by default, Redis when REDIS_URL is set. One cluster per worker host,
# named after the host, so each host's schedule runs on that host only.
REDIS_URL = os.environ.get("REDIS_URL", "").strip()
Q_CLUSTER = {
    # One name for every host's cluster: django-q2 signs task packages with it, so a task one host
    # queues for another (a stop) can be read there. Each host's cluster reads its own queue, named
    # after the host: its reconcile schedule and those tasks are routed there (cluster=<host>).
    "name": "controlroom",
    "cluster_name": CONTROLROOM_HOST,
    "workers": env_number("Q_WORKERS", 2, int, 1),
    "timeout": 120,
    "retry": 180,
    "catch_up": False,
    "max_attempts": 1,
    "save_limit": 500,
    "label": "Background tasks",
    "poll": 1,
    # django-q2 runs its scheduler once per ~30 s of guard cycles; a cycle of 30 s or more makes
    # the first scheduling happen at start-up (the integration tests use that).
    "guard_cycle": env_number("Q_GUARD_CYCLE", 0.5, float, 0.1),
}
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain"},
        "null": {"class": "logging.NullHandler"},
    },
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    # Apprise's lines can carry channel tokens: delivery errors are recorded, redacted, instead.
    "loggers": {"django": {"level": "INFO"}, "apprise": {"handlers": ["null"], "propagate": False}},
}
