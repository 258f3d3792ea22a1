"""Run real `manage.py` processes (qcluster, migrate) against a database of their own."""

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def environment(database_url, host, **extra):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "controlroom.settings_test", "DATABASE_URL": database_url}
    env.update({"CONTROLROOM_HOST": host, "Q_GUARD_CYCLE": "30", "PYTHONUNBUFFERED": "1", **extra})
    return env


def manage(env, *args, check=True):
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=check, capture_output=True, text=True
    )


class Cluster:
    """A real `manage.py qcluster` process; stop() sends SIGTERM and waits for it."""

    def __init__(self, env, log_path):
        self.log = open(log_path, "w")  # noqa: SIM115  (closed in stop)
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "qcluster"], cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def stop(self, timeout=30):
        # SIGTERM to the cluster's main process only, as an init system sends it: django-q2's
        # sentinel keeps SIGTERM's default action, and killed by a group signal while it waits on
        # the stop event it leaves that event's lock held, so the main process's stop hangs.
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # whatever child outlived it
        self.log.close()


def wait_until(predicate, timeout, interval=0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


_template = {}


def migrate_sqlite(path):
    """Give `path` a migrated SQLite database: a copy of one migrated once per test process (a
    `manage.py migrate` takes seconds on a busy machine, a copy milliseconds). Returns its URL."""
    if "path" not in _template:
        directory = tempfile.mkdtemp(prefix="cr-migrated-")
        atexit.register(shutil.rmtree, directory, True)
        template = Path(directory) / "migrated.sqlite3"
        manage(environment(f"sqlite:///{template}", "template"), "migrate", "-v0")
        _template["path"] = template
    shutil.copyfile(_template["path"], path)
    return f"sqlite:///{path}"
