"""Two worker hosts, two real django-q2 clusters, one PostgreSQL database, one Redis broker."""

import os
import uuid

import libtmux
import psutil
import psycopg
import pytest

from tests.clusters import Cluster, environment, manage, wait_until
from tests.conftest import postgres_url

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not postgres_url(), reason="needs PostgreSQL: set DATABASE_URL=postgres://…"),
    pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="needs Redis: set REDIS_URL=redis://…"),
]


@pytest.fixture
def scratch_database():
    """A PostgreSQL database of its own (the clusters are separate processes), dropped after."""
    base = postgres_url()
    name = f"cr_multihost_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(base, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield name, base.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(base, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def rows(url, sql, *params):
    with psycopg.connect(url) as db:
        return db.execute(sql, params).fetchall()


def seed(url, hosts_and_sockets):
    with psycopg.connect(url) as db:
        ticket = db.execute(
            "INSERT INTO tickets_ticket (key, title, description, state, kind, priority, owner, failure_reason, note,"
            " closed_by, created_at, updated_at) VALUES ('MC-77', 't', '', 'in_progress', 'task', 3, '', '', '', '',"
            " now(), now()) RETURNING id"
        ).fetchone()[0]
        for host, socket in hosts_and_sockets:
            db.execute(
                "INSERT INTO runtimes_runtime (ticket_id, kind, handle, host, tmux_socket, tmux_target, provider,"
                " model, profile, cwd, output_path, started_at, exit_outcome, runtime_class, class_reason,"
                " class_message, class_changed_at, controller_action, created_at) VALUES (%s, 'tmux', %s, %s, %s,"
                " 'cr-mc-77', 'claude', '', '', '', '', now(), '', 'pending', 'launched', '', now(), 'none', now())",
                (ticket, f"tmux:cr-mc-77@{host}", host, socket),
            )


def test_each_host_reconciles_its_own_runtimes_and_a_stopped_host_turns_unknown(scratch_database, tmp_path):
    _, url = scratch_database
    tag = uuid.uuid4().hex[:6]
    hosts = {f"host-a-{tag}": f"crtest-a-{tag}", f"host-b-{tag}": f"crtest-b-{tag}"}
    servers = [libtmux.Server(socket_name=socket) for socket in hosts.values()]
    for server in servers:
        server.cmd("new-session", "-d", "-s", "cr-mc-77", "sleep", "600")
    envs = {
        host: environment(url, host, REDIS_URL=os.environ["REDIS_URL"], CONTROLROOM_HOST_SILENT_AFTER="5")
        for host in hosts
    }
    host_a, host_b = hosts
    manage(envs[host_a], "migrate", "-v0")
    seed(url, hosts.items())
    clusters = {}
    try:
        for host, env in envs.items():
            manage(env, "setup_schedules")
            clusters[host] = Cluster(env, tmp_path / f"{host}.log")

        def live_by_own_host():
            # Each runtime's first sight (pending → tmux-live); on a slow machine a later pass of A
            # may already have found B silent and B found its worker again: those rows come after.
            found = rows(
                url,
                "SELECT r.host, e.host FROM runtimes_runtime r JOIN runtimes_livenessevent e ON e.runtime_id = r.id"
                " WHERE e.from_class = 'pending' AND e.to_class = 'tmux-live'",
            )
            return len(found) == 2 and found

        written = wait_until(live_by_own_host, timeout=120)
        logs = {host: (tmp_path / f"{host}.log").read_text()[-3000:] for host in hosts}
        assert written, "\n".join(f"--- {host}\n{log}" for host, log in logs.items())
        assert all(runtime_host == writer for runtime_host, writer in written)  # nobody touched another's rows
        assert {h for (h,) in rows(url, "SELECT host FROM runtimes_reconcilerheartbeat")} == set(hosts)

        clusters.pop(host_b).stop()  # host B goes quiet; its worker keeps running, unobserved
        # Wait until host B's last heartbeat is older than the 5 s silence limit (by the database's clock).
        silent_sql = (
            "SELECT now() - finished_at > interval '5 seconds' FROM runtimes_reconcilerheartbeat WHERE host = %s"
        )
        assert wait_until(lambda: rows(url, silent_sql, host_b) == [(True,)], timeout=60)
        enqueue = f"from django_q.tasks import async_task; async_task('runtimes.tasks.reconcile_host', host='{host_a}')"
        manage(envs[host_a], "shell", "-c", enqueue)

        def b_unknown():
            return rows(url, "SELECT runtime_class, class_reason FROM runtimes_runtime WHERE host = %s", host_b)

        assert wait_until(lambda: b_unknown() == [("unknown", "host-silent")], timeout=60), b_unknown()
        assert rows(url, "SELECT runtime_class FROM runtimes_runtime WHERE host = %s", host_a) == [("tmux-live",)]
        # Noticed by the host that is still reporting. (With a 5 s silence limit and a pass a
        # minute, a slow machine may also have let B's pass find A silent before B stopped: that
        # is B's view of A, not what this test is about.)
        writers = rows(
            url,
            "SELECT DISTINCT e.host FROM runtimes_livenessevent e JOIN runtimes_runtime r ON r.id = e.runtime_id"
            " WHERE e.to_class = 'unknown' AND r.host = %s",
            host_b,
        )
        assert writers == [(host_a,)]
    finally:
        for cluster in clusters.values():
            cluster.stop()
        for server in servers:
            server.kill()


def test_a_stop_on_host_a_is_carried_out_by_host_bs_cluster_and_recorded_by_it(scratch_database, tmp_path):
    _, url = scratch_database
    tag = uuid.uuid4().hex[:6]
    host_a, host_b, socket = f"host-a-{tag}", f"host-b-{tag}", f"crtest-b-{tag}"
    server = libtmux.Server(socket_name=socket)
    server.cmd("new-session", "-d", "-s", "cr-mc-78", "sleep", "600")
    server.cmd("set-option", "-t", "=cr-mc-78:", "@controlroom", f"mark-{tag}")
    pid = int(server.cmd("display-message", "-p", "-t", "=cr-mc-78:", "#{pane_pid}").stdout[0])
    envs = {host: environment(url, host, REDIS_URL=os.environ["REDIS_URL"]) for host in (host_a, host_b)}
    manage(envs[host_a], "migrate", "-v0")
    seed(url, [(host_b, socket)])
    with psycopg.connect(url) as db:
        db.execute(
            "UPDATE runtimes_runtime SET runtime_class = 'tmux-live', tmux_target = 'cr-mc-78', pid = %s,"
            " pid_create_time = %s, launch_token = %s",
            (pid, psutil.Process(pid).create_time(), f"mark-{tag}"),
        )
    handle = f"tmux:cr-mc-77@{host_b}"
    cluster = None
    try:
        asked = manage(envs[host_a], "stop_worker", handle, "--by", "maria")  # host A has no such worker
        assert "stop requested" in asked.stdout, asked.stderr
        state = "SELECT runtime_class, controller_action FROM runtimes_runtime"
        assert rows(url, state) == [("tmux-live", "stop-requested")]
        assert rows(url, "SELECT count(*) FROM runtimes_livenessevent") == [(0,)]  # nothing recorded as killed
        assert server.cmd("has-session", "-t", "=cr-mc-78").returncode == 0 and psutil.pid_exists(pid)

        cluster = Cluster(envs[host_b], tmp_path / "b.log")  # host B's cluster picks the task up
        killed = wait_until(lambda: rows(url, state) == [("killed-by-controller", "kill")], timeout=90)
        assert killed, (rows(url, state), (tmp_path / "b.log").read_text())
        events = rows(url, "SELECT host, from_class, to_class, message FROM runtimes_livenessevent")
        assert [event[:3] for event in events] == [(host_b, "tmux-live", "killed-by-controller")]
        assert "stopped by maria" in events[0][3]
        assert server.cmd("has-session", "-t", "=cr-mc-78").returncode != 0
    finally:
        if cluster:
            cluster.stop()
        server.kill()
