"""A long-running reconciler survives losing its database connection, and stops when its database
file is gone instead of writing into nothing."""

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading

import psycopg
import pytest
from django.db import connection

from runtimes import tasks
from runtimes.models import ReconcilerHeartbeat
from tests.clusters import ROOT, environment, migrate_sqlite
from tests.conftest import postgres_url, wait_for

needs_postgres = pytest.mark.skipif(not postgres_url(), reason="needs PostgreSQL: set DATABASE_URL=postgres://…")


class Watch:
    """A real `reconcile_runtimes --watch` process; its output lines arrive on a queue."""

    def __init__(self, env, *args):
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "reconcile_runtimes", "--watch", *args],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.lines = queue.Queue()
        self.errors = []
        threading.Thread(target=self._pump, args=(self.process.stdout, self.lines.put), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.process.stderr, self.errors.append), daemon=True).start()

    @staticmethod
    def _pump(stream, sink):
        for line in stream:
            sink(line.strip())

    def next_line(self, timeout=30):
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            return None

    def drain(self):
        while not self.lines.empty():
            self.lines.get_nowait()

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def terminate_other_backends(url):
    """What an operator's pg_terminate_backend (or a failover) does to every other session."""
    with psycopg.connect(url, autocommit=True) as admin:
        return admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()[0]


def url_of(db_name):
    return postgres_url().rsplit("/", 1)[0] + f"/{db_name}"


@needs_postgres
@pytest.mark.django_db(transaction=True)
def test_a_watch_loop_on_postgresql_recovers_after_its_backend_is_terminated():
    url = url_of(connection.settings_dict["NAME"])
    watch = Watch(environment(url, "pg-watch"), "--interval", "0.2", "--host", "pg-watch")
    try:
        assert "pg-watch: 0 runtimes" in (watch.next_line() or ""), watch.errors
        connection.close()  # ours too: the test reads the heartbeat on a fresh connection below
        assert terminate_other_backends(url) >= 1
        watch.drain()  # lines of passes that ran before the backend went
        after = [watch.next_line() for _ in range(3)]  # at least two passes begun after it
    finally:
        watch.stop()
    assert all(line and "pg-watch: 0 runtimes" in line for line in after), watch.errors
    assert len(watch.errors) <= 1, watch.errors  # at most the one pass that was under way
    assert watch.process.returncode == 0
    assert ReconcilerHeartbeat.objects.filter(host="pg-watch").exists()


@needs_postgres
@pytest.mark.django_db(transaction=True)
def test_a_scheduled_pass_after_its_backend_was_terminated_succeeds():
    url = url_of(connection.settings_dict["NAME"])
    assert tasks.reconcile_host(host="pg-task").startswith("pg-task: 0 runtimes")
    with psycopg.connect(url, autocommit=True) as admin:
        # The connection this process (a django-q2 worker) holds is ended by the server.
        admin.execute("SELECT pg_terminate_backend(%s)", [connection.connection.info.backend_pid])
    assert tasks.reconcile_host(host="pg-task").startswith("pg-task: 0 runtimes")


@pytest.fixture
def sqlite_database(tmp_path):
    path = tmp_path / "watch.sqlite3"
    env = environment(f"sqlite:///{path}", "lite-watch")
    migrate_sqlite(path)
    return path, env


def test_a_watch_loop_stops_with_an_error_when_its_sqlite_file_is_deleted(sqlite_database):
    path, env = sqlite_database
    watch = Watch(env, "--interval", "0.05")
    try:
        assert "lite-watch: 0 runtimes" in (watch.next_line() or ""), watch.errors
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(f"{path}{suffix}"):
                os.unlink(f"{path}{suffix}")
        assert wait_for(lambda: watch.process.poll() is not None, timeout=30)
    finally:
        watch.stop()
    assert watch.process.returncode != 0
    assert wait_for(lambda: any(f"the database file {path} was deleted" in e for e in watch.errors))
    assert not path.exists()  # the loop did not create an empty database in its place


def test_a_watch_loop_stops_when_its_sqlite_file_is_replaced_by_another(sqlite_database, tmp_path):
    path, env = sqlite_database
    shutil.copy(path, tmp_path / "copy.sqlite3")
    watch = Watch(env, "--interval", "0.05")
    try:
        assert "lite-watch: 0 runtimes" in (watch.next_line() or ""), watch.errors
        os.replace(tmp_path / "copy.sqlite3", path)
        assert wait_for(lambda: watch.process.poll() is not None, timeout=30)
    finally:
        watch.stop()
    assert watch.process.returncode != 0
    assert wait_for(lambda: any("was replaced by another file" in e for e in watch.errors))
