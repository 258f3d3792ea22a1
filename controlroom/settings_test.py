"""Settings for the test suite: production settings with a throwaway key and fast hashing."""

import os

os.environ.setdefault("SECRET_KEY", "test-only-not-secret-" + "x" * 40)
os.environ.setdefault("CONTROLROOM_HOST", "test-host")

from controlroom.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
SECURE_SSL_REDIRECT = False
Q_CLUSTER = {**Q_CLUSTER, "sync": False}  # noqa: F405

# Every test run gets a test database of its own, so two runs side by side in one checkout never
# share (and destroy) one: var/test-<pid>.sqlite3 on SQLite, test_<name>_<pid> on PostgreSQL.
# pytest-xdist workers add their own _gwN suffix on top.
_run = os.environ.setdefault("CONTROLROOM_TEST_RUN", str(os.getpid()))
_default = DATABASES["default"]  # noqa: F405
if _default["ENGINE"] == "django.db.backends.sqlite3":
    _default["TEST"] = {"NAME": str(VAR_DIR / f"test-{_run}.sqlite3")}  # noqa: F405
else:
    _default["TEST"] = {**_default.get("TEST", {}), "NAME": f"test_{_default['NAME']}_{_run}"}
