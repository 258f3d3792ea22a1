"""Auto-resume from a real django-q2 cluster: a paused worker is resumed once, on its host."""

import sqlite3
import time

import pytest

from tests.clusters import Cluster, environment, manage, migrate_sqlite, wait_until

pytestmark = pytest.mark.slow


def query(db_path, sql, *params):
    with sqlite3.connect(db_path) as db:
        return db.execute(sql, params).fetchall()


def test_auto_resume_fires_once_from_a_real_qcluster_and_the_resumed_run_completes(tmp_path, tmux_socket, fake_bin):
    db_path = tmp_path / "resume.sqlite3"
    env = environment(
        f"sqlite:///{db_path}", "ar-host", CONTROLROOM_AUTO_RESUME="1", CONTROLROOM_RESUME_JITTER="0",
        CONTROLROOM_CLAUDE_BIN=str(fake_bin / "claude"), CONTROLROOM_RUN_DIR=str(tmp_path / "runs"),
    )  # fmt: skip
    migrate_sqlite(db_path)
    setup = (
        "from tickets.models import Ticket; from runtimes.models import WorkerProfile; "
        "Ticket.objects.create(key='MC-77', title='t', state='in_progress', kind='task'); "
        "WorkerProfile.objects.create(name='limited', provider='claude', model='claude-session-limit')"
    )
    manage(env, "shell", "-c", setup)
    (fake_bin / "resets_at").write_text(str(int(time.time()) + 2))  # the limit resets in 2 s
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Fix the bug.")
    manage(env, "launch_worker", "MC-77", "--profile", "limited", "--cwd", str(tmp_path), "--prompt-file",
           str(prompt), "--tmux-socket", tmux_socket)  # fmt: skip

    def paused():
        manage(env, "reconcile_runtimes")
        return query(db_path, "SELECT id FROM runtimes_runtime WHERE runtime_class = 'usage-limited'")

    [(paused_id,)] = wait_until(paused, timeout=60)
    schedule = query(
        db_path, "SELECT func, args, cluster FROM django_q_schedule WHERE name = ?", f"auto-resume:{paused_id}"
    )
    assert schedule == [("runtimes.tasks.auto_resume", f"({paused_id},)", "ar-host")]
    (fake_bin / "limit_cleared").write_text("")  # by the time the cluster runs, the limit has reset

    cluster = Cluster(env, tmp_path / "qcluster.log")
    try:
        resumed = wait_until(
            lambda: query(
                db_path, "SELECT id, resume_count FROM runtimes_runtime WHERE resumed_from_id = ?", paused_id
            ),
            timeout=90,
        )
        tasks = wait_until(
            lambda: query(
                db_path, "SELECT success, result FROM django_q_task WHERE func = 'runtimes.tasks.auto_resume'"
            ),
            timeout=30,
        )
    finally:
        cluster.stop()
    log = (tmp_path / "qcluster.log").read_text()
    assert len(resumed) == 1 and resumed[0][1] == 1, log
    assert len(tasks) == 1 and tasks[0][0] == 1, log  # ran once, and succeeded
    assert not query(db_path, "SELECT id FROM django_q_schedule WHERE name LIKE 'auto-resume:%'")  # a ONCE schedule
    [(old_class, old_message)] = query(
        db_path, "SELECT runtime_class, class_message FROM runtimes_runtime WHERE id = ?", paused_id
    )
    assert old_class == "resumed" and "resumed by auto-resume" in old_message

    successor = resumed[0][0]

    def finished():
        manage(env, "reconcile_runtimes")
        return query(
            db_path, "SELECT exit_outcome FROM runtimes_runtime WHERE id = ? AND runtime_class = 'exited'", successor
        )

    assert wait_until(finished, timeout=60) == [("completed",)]
