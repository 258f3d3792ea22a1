import sqlite3

import pytest

from tests.clusters import Cluster, environment, manage, migrate_sqlite, wait_until

pytestmark = pytest.mark.slow


def heartbeat(db_path, host):
    with sqlite3.connect(db_path) as db:
        return db.execute("SELECT runtimes_seen FROM runtimes_reconcilerheartbeat WHERE host = ?", (host,)).fetchone()


def failed_tasks(db_path):
    with sqlite3.connect(db_path) as db:
        return db.execute("SELECT func FROM django_q_task WHERE success = 0").fetchall()


def test_a_real_qcluster_runs_the_registered_schedule_and_a_heartbeat_appears(tmp_path):
    db_path = tmp_path / "cluster.sqlite3"
    env = environment(f"sqlite:///{db_path}", "qc-host")
    migrate_sqlite(db_path)
    registered = manage(env, "setup_schedules")
    assert "Created schedule 'reconcile-runtimes@qc-host'" in registered.stdout
    assert "Updated schedule" in manage(env, "setup_schedules").stdout  # idempotent, by name

    cluster = Cluster(env, tmp_path / "qcluster.log")
    try:
        beat = wait_until(lambda: heartbeat(db_path, "qc-host"), timeout=60)
        # A pass that fails (here: its table is gone) is reported in django-q2's failed tasks.
        with sqlite3.connect(db_path) as db:
            db.execute("ALTER TABLE runtimes_reconcilerheartbeat RENAME TO broken")
        enqueue = "from django_q.tasks import async_task; async_task('runtimes.tasks.reconcile_host', host='qc-host')"
        manage(env, "shell", "-c", enqueue)
        failed = wait_until(lambda: failed_tasks(db_path), timeout=30)
    finally:
        cluster.stop()
    log = (tmp_path / "qcluster.log").read_text()
    assert beat is not None, log
    assert cluster.process.returncode is not None
    assert failed == [("runtimes.tasks.reconcile_host",)], log
    assert "Failed 'runtimes.tasks.reconcile_host'" in log and "no such table: runtimes_reconcilerheartbeat" in log
