"""Notifications through a real django-q2 cluster: real tmux, real `manage.py` passes and commands,
the cluster delivering to a local `json://` receiver and to a dead channel."""

import sqlite3

import pytest

from tests.clusters import Cluster, environment, manage, migrate_sqlite, wait_until
from tests.conftest import start_session
from tests.notify_helpers import closed_port

pytestmark = pytest.mark.slow

HOST = "qc-notify"


def deliveries(db_path):
    with sqlite3.connect(db_path) as db:
        return db.execute("SELECT kind, status, attempts, error FROM runtimes_delivery ORDER BY id").fetchall()


def queued(db_path):
    with sqlite3.connect(db_path) as db:
        return db.execute("SELECT COUNT(*) FROM django_q_ormq").fetchone()[0]


def test_a_real_cluster_delivers_once_per_episode_and_once_more_on_resolve(tmp_path, tmux, tmux_socket, receiver):
    db_path = tmp_path / "cluster.sqlite3"
    dead = f"json://127.0.0.1:{closed_port()}/hook"
    env = environment(
        f"sqlite:///{db_path}",
        HOST,
        CONTROLROOM_NOTIFY_URLS=f"{receiver.url},{dead}",
        CONTROLROOM_PUBLIC_URL="https://cr.example",
        CONTROLROOM_NOTIFY_QUIET="120",
    )
    migrate_sqlite(db_path)
    start_session(tmux, "cr-nq", "sleep", "600")
    create = (
        "from runtimes.models import Runtime; from tickets.models import Ticket; "
        "t = Ticket.objects.create(key='MC-77', title='Cluster ticket', state='in_progress'); "
        f"Runtime.objects.create(ticket=t, kind='tmux', handle='tmux:cr-nq', host='{HOST}', "
        f"tmux_socket='{tmux_socket}', tmux_target='cr-nq', provider='codex')"
    )
    manage(env, "shell", "-c", create)

    cluster = Cluster(env, tmp_path / "qcluster.log")
    try:
        manage(env, "reconcile_runtimes")  # pending -> tmux-live: nothing to tell
        tmux.cmd("kill-session", "-t", "cr-nq")
        manage(env, "reconcile_runtimes")  # tmux-missing: one notice per channel, queued
        got_opened = wait_until(lambda: len(receiver.posts) == 1, timeout=60)
        dead_failed = wait_until(lambda: any(row[2] == 1 and row[3] for row in deliveries(db_path)), timeout=60)

        manage(env, "reconcile_runtimes")  # the episode lasts: nothing new
        manage(env, "reconcile_runtimes")
        drained = wait_until(lambda: queued(db_path) == 0, timeout=60)
        after_repeats = len(receiver.posts)

        manage(env, "recover_runtime", "tmux:cr-nq", "--by", "alice")  # settled: resolved at once
        got_resolved = wait_until(lambda: len(receiver.posts) == 2, timeout=60)
    finally:
        cluster.stop()
    log = (tmp_path / "qcluster.log").read_text()
    assert got_opened and dead_failed and drained and got_resolved, log
    assert after_repeats == 1
    assert [post["title"] for post in receiver.posts] == [
        "[Control Room] needs attention: MC-77 tmux:cr-nq",
        "[Control Room] resolved: MC-77 tmux:cr-nq",
    ]
    assert "https://cr.example/admin/runtimes/runtime/1/change/" in receiver.posts[0]["message"]
    rows = deliveries(db_path)
    assert [(kind, status) for kind, status, _, _ in rows if status == "sent"] == [
        ("opened", "sent"),
        ("resolved", "sent"),
    ]
    # The dead channel only failed its own rows (pending for a retry), with the reason recorded.
    dead_rows = [row for row in rows if row[1] != "sent"]
    assert [(kind, status, attempts) for kind, status, attempts, _ in dead_rows] == [
        ("opened", "pending", 1),
        ("resolved", "pending", 1),
    ]
    assert all("Connection error" in error for *_, error in dead_rows)
    assert "Processed 'runtimes.notify.tasks.deliver'" in log
