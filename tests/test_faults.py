"""Faults the reconciler survives: nothing lost, nothing half-written, the rest of the pass done."""

import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from functools import partial

import psutil
import pytest
from django.db import OperationalError, connections

from runtimes import ledger, plainsql
from runtimes.models import LivenessEvent, Runtime
from runtimes.probes import processes as process_probe
from runtimes.reconcile import reconcile
from tests.clusters import ROOT, environment, manage, migrate_sqlite
from tests.conftest import make_runtime, make_ticket, start_session, wait_for
from tests.test_reconcile import process_runtime, refreshed, tmux_runtime


def hanging_tmux(tmp_path, socket):
    """A tmux that hangs for one socket and is the real tmux for every other (fault injection)."""
    wrapper = tmp_path / "tmux"
    real = subprocess.run(["which", "tmux"], capture_output=True, text=True, check=True).stdout.strip()
    wrapper.write_text(f'#!/bin/sh\ncase " $* " in *" -L {socket} "*) exec sleep 30;; esac\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


@pytest.mark.django_db
def test_a_hanging_tmux_socket_makes_only_its_runtimes_unknown(tmux, tmux_socket, tmp_path, settings, sleeper):
    start_session(tmux, "cr-fine", "sleep", "60")
    fine = tmux_runtime(tmux_socket, "cr-fine", runtime_class="pending")
    stuck = tmux_runtime("crtest-hung", "cr-stuck")
    process = process_runtime(sleeper(), runtime_class="pending")
    settings.CONTROLROOM = {
        **settings.CONTROLROOM,
        "TMUX_BIN": hanging_tmux(tmp_path, "crtest-hung"),
        "TMUX_TIMEOUT": 1,
    }
    summary = reconcile()
    assert refreshed(fine).runtime_class == "tmux-live"
    assert refreshed(process).runtime_class == "process-live"
    stuck = refreshed(stuck)
    assert (stuck.runtime_class, stuck.class_reason) == ("unknown", "tmux-unreachable")
    assert "timed out after 1s" in stuck.class_message
    assert summary.errors == 0 and stuck.ticket.failure_reason == ""


@pytest.mark.django_db
def test_access_denied_is_recorded_as_unknown_and_the_pass_goes_on(sleeper, monkeypatch):
    denied_process, fine_process = sleeper(), sleeper()
    denied = process_runtime(denied_process, runtime_class="pending")
    fine = process_runtime(fine_process, runtime_class="pending")
    real = psutil.Process

    def process(pid):
        if pid == denied_process.pid:
            raise psutil.AccessDenied(pid)
        return real(pid)

    monkeypatch.setattr(process_probe.psutil, "Process", process)
    reconcile()
    assert (refreshed(denied).runtime_class, denied.class_reason) == ("unknown", "access-denied")
    assert refreshed(fine).runtime_class == "process-live"


@pytest.mark.django_db
def test_a_process_vanishing_between_lookup_and_read_is_dead(sleeper, monkeypatch):
    vanishing = process_runtime(sleeper())

    class Vanishing(psutil.Process):
        def create_time(self):
            raise psutil.NoSuchProcess(self.pid)

    monkeypatch.setattr(process_probe.psutil, "Process", Vanishing)
    reconcile()
    assert (refreshed(vanishing).runtime_class, vanishing.class_reason) == ("process-dead", "process-exited")


@pytest.mark.django_db(transaction=True)
def test_a_database_failure_mid_write_commits_nothing_and_the_next_pass_catches_up(sleeper, monkeypatch):
    processes = [sleeper() for _ in range(3)]
    runtimes = [process_runtime(p, runtime_class="pending") for p in processes]

    def failing_insert(model, rows, fields):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(plainsql, "insert_rows", failing_insert)  # the ledger rows' INSERT
    with pytest.raises(OperationalError):
        reconcile()  # the runtimes were already updated in the same transaction
    assert [refreshed(r).runtime_class for r in runtimes] == ["pending"] * 3
    assert not LivenessEvent.objects.exists()

    monkeypatch.undo()
    assert reconcile().transitions == 3
    assert LivenessEvent.objects.count() == 3


def sqlite_env(tmp_path, host="fault-host"):
    env = environment(f"sqlite:///{tmp_path}/fault.sqlite3", host, CONTROLROOM_SQLITE_TIMEOUT="1")
    migrate_sqlite(tmp_path / "fault.sqlite3")
    return env


def seed_rows(db_path, count, host="fault-host", kind="tmux"):
    """Insert `count` pending tmux runtimes whose sessions do not exist, via plain SQL."""
    now = "2020-01-01 00:00:00"
    with sqlite3.connect(db_path) as db:
        # The ticket key's CHECK constraint uses REGEXP, which Django registers on its connections.
        db.create_function("REGEXP", 2, lambda pattern, text: re.search(pattern, text or "") is not None)
        db.execute(
            "INSERT INTO tickets_ticket (key, title, description, state, kind, priority, owner, failure_reason, note,"
            " closed_by, created_at, updated_at) VALUES ('MC-1', 't', '', 'waiting', 'task', 3, '', '', '', '', ?, ?)",
            (now, now),
        )
        ticket = db.execute("SELECT id FROM tickets_ticket").fetchone()[0]
        db.executemany(
            "INSERT INTO runtimes_runtime (ticket_id, kind, handle, host, tmux_socket, tmux_target, provider, model,"
            " profile, cwd, output_path, started_at, exit_outcome, runtime_class, class_reason, class_message,"
            " class_changed_at, controller_action, created_at) VALUES (?, ?, ?, ?, 'crtest-none', ?, 'other', '', '',"
            " '', '', ?, '', 'pending', 'launched', '', ?, 'none', ?)",
            [(ticket, kind, f"tmux:s{i}", host, f"s{i}", now, now, now) for i in range(count)],
        )


def test_a_locked_sqlite_database_fails_the_pass_cleanly(tmp_path):
    env = sqlite_env(tmp_path)
    db_path = tmp_path / "fault.sqlite3"
    seed_rows(db_path, 50)
    locker = sqlite3.connect(db_path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        failed = manage(env, "reconcile_runtimes", check=False)
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert failed.returncode != 0
    assert "Reconcile pass failed, nothing was written: database is locked" in failed.stderr
    assert "Traceback" not in failed.stderr
    with sqlite3.connect(db_path) as db:
        assert db.execute("SELECT count(*) FROM runtimes_livenessevent").fetchone() == (0,)
    caught_up = manage(env, "reconcile_runtimes", "--json")
    assert '"transitions": 50' in caught_up.stdout


def last_heartbeat(db_path):
    """When the fault host's reconciler last finished a pass (None before its first)."""
    with sqlite3.connect(db_path, timeout=5) as db:
        row = db.execute("SELECT max(finished_at) FROM runtimes_reconcilerheartbeat").fetchone()
    return row[0]


def passes_run_or_died(db_path, beat_before, worker):
    return last_heartbeat(db_path) != beat_before or worker.poll() is not None


def test_sigkill_mid_pass_leaves_class_and_ledger_in_agreement(tmp_path):
    env = sqlite_env(tmp_path)
    db_path = tmp_path / "fault.sqlite3"
    seed_rows(db_path, 800)
    rng = random.Random(7)
    for _ in range(6):
        beat_before = last_heartbeat(db_path)
        worker = subprocess.Popen(
            [sys.executable, "manage.py", "reconcile_runtimes", "--watch", "--interval", "0.01"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        # Kill it at a random point once its passes run (however long start-up takes on a busy machine).
        assert wait_for(partial(passes_run_or_died, db_path, beat_before, worker), timeout=60)
        assert worker.poll() is None, "the reconcile loop died by itself"
        time.sleep(rng.uniform(0.0, 1.0))  # where in the next passes the kill lands, not a wait for anything
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
        with sqlite3.connect(db_path) as db:
            # The ticket flips between waiting and in progress, so every pass has transitions.
            db.execute(
                "UPDATE tickets_ticket SET state = CASE state WHEN 'waiting' THEN 'in_progress' ELSE 'waiting' END"
            )
            mismatched = db.execute(
                """SELECT count(*) FROM runtimes_runtime r WHERE r.runtime_class != COALESCE((
                     SELECT e.to_class FROM runtimes_livenessevent e WHERE e.runtime_id = r.id
                     ORDER BY e.at DESC, e.id DESC LIMIT 1), 'pending')"""
            ).fetchone()[0]
            broken_chains = db.execute(
                """SELECT count(*) FROM runtimes_livenessevent e WHERE e.from_class != COALESCE((
                     SELECT p.to_class FROM runtimes_livenessevent p WHERE p.runtime_id = e.runtime_id
                     AND (p.at < e.at OR (p.at = e.at AND p.id < e.id)) ORDER BY p.at DESC, p.id DESC LIMIT 1),
                     'pending')"""
            ).fetchone()[0]
            events = db.execute("SELECT count(*) FROM runtimes_livenessevent").fetchone()[0]
        assert (mismatched, broken_chains) == (0, 0), events
    assert events > 0


@pytest.mark.django_db(transaction=True)
def test_two_reconcilers_a_hundred_passes_each_with_changing_workers(sleeper):
    processes = [sleeper() for _ in range(20)]
    ticket = make_ticket()
    runtimes = [process_runtime(p, ticket=ticket, runtime_class="pending") for p in processes]
    make_runtime(kind="websocket", handle="ws:busy", ticket=ticket)
    stop = threading.Event()
    errors = []

    def reconciler():
        try:
            for _ in range(100):
                reconcile(host="test-host")
        except Exception as error:
            errors.append(error)
        finally:
            connections.close_all()

    def killer():
        # Kill only once every worker has been seen alive, so each chain is known: pending → live (→ dead).
        try:
            pending = Runtime.objects.filter(pk__in=[r.pk for r in runtimes], runtime_class="pending")
            wait_for(lambda: not pending.exists(), timeout=120)
        finally:
            connections.close_all()
        for process in processes[::2]:
            if stop.wait(0.05):
                return
            process.kill()
            process.wait()

    threads = [threading.Thread(target=reconciler) for _ in range(2)] + [threading.Thread(target=killer)]
    for thread in threads:
        thread.start()
    for thread in threads[:2]:
        thread.join(timeout=300)
    stop.set()
    threads[2].join()
    assert not errors, errors
    reconcile(host="test-host")  # settle whatever the last kills changed

    for runtime in runtimes:
        runtime.refresh_from_db()
        chain = list(runtime.events.order_by("at", "pk").values_list("from_class", "to_class"))
        killed = runtime.pid in {p.pid for p in processes[::2]}
        expected = [("pending", "process-live")] + ([("process-live", "process-dead")] if killed else [])
        assert chain == expected, (runtime.handle, chain)
    assert ledger.Transition  # the writer under test
    assert Runtime.objects.filter(runtime_class="process-dead").count() == 10


@pytest.mark.django_db
@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv to drop privileges"
)
def test_a_socket_owned_by_another_user_is_unknown_not_missing(tmux, tmux_socket, tmp_path, settings):
    start_session(tmux, "cr-theirs", "sleep", "60")
    socket_path = tmux.cmd("display-message", "-p", "#{socket_path}").stdout[0]
    as_nobody = tmp_path / "tmux"
    real = shutil.which("tmux")
    as_nobody.write_text(f'#!/bin/sh\nexec setpriv --reuid=65534 --regid=65534 --clear-groups {real} "$@"\n')
    as_nobody.chmod(0o755)
    runtime = make_runtime(tmux_socket=socket_path, tmux_target="cr-theirs", runtime_class="tmux-live")
    settings.CONTROLROOM = {**settings.CONTROLROOM, "TMUX_BIN": str(as_nobody)}
    reconcile()
    runtime = refreshed(runtime)
    assert (runtime.runtime_class, runtime.class_reason) == ("unknown", "tmux-unreachable")
    assert "Permission denied" in runtime.class_message
