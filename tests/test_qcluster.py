import sqlite3

import pytest

from tests.clusters import Cluster, environment, manage, wait_until

pytestmark = pytest.mark.slow


def heartbeat(db_path, host):
    with sqlite3.connect(db_path) as db:
        return db.execute("SELECT runtimes_seen FROM runtimes_reconcilerheartbeat WHERE host = ?", (host,)).fetchone()


def test_a_real_qcluster_runs_the_registered_schedule_and_a_heartbeat_appears(tmp_path):
    db_path = tmp_path / "cluster.sqlite3"
    env = environment(f"sqlite:///{db_path}", "qc-host")
    manage(env, "migrate", "-v0")
    registered = manage(env, "setup_schedules")
    assert "Created schedule 'reconcile-runtimes@qc-host'" in registered.stdout
    assert "Updated schedule" in manage(env, "setup_schedules").stdout  # idempotent, by name

    cluster = Cluster(env, tmp_path / "qcluster.log")
    try:
        beat = wait_until(lambda: heartbeat(db_path, "qc-host"), timeout=60)
    finally:
        cluster.stop()
    log = (tmp_path / "qcluster.log").read_text()
    assert beat is not None, log
    assert cluster.process.returncode is not None
    with sqlite3.connect(db_path) as db:
        tasks = db.execute("SELECT name, success FROM django_q_task").fetchall()
    assert tasks and all(success for _, success in tasks), log
