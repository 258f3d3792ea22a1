"""The detection benchmark: how long from a worker's death to its committed ledger row. A program,
not a test; every ratio is against figures measured or computed in the same run.

On a throwaway database, per size N: N/2 real tmux panes (`sleep`, remain-on-exit on) on private
sockets of at most 50 sessions each, N/2 real sleeping processes, and their rows. A real
`manage.py watch_runtimes` process watches them. Then:
  single  20 workers killed one at a time (alternately a pane's process and a background process),
          each waited for until its ledger row is visible to another connection;
  burst   50 workers killed together, all waited for;
  idle    the CPU time of the watcher and its tmux clients over --idle-seconds with the rest still
          watched (starting 12 s after the kills), and the watcher's RSS.
Latency is kill → row visible, polled every POLL seconds from this process (so it includes up to
one poll interval). The schedule's latency is computed, not waited for: a death falls uniformly
within the schedule's interval, so it is recorded after U(0, interval) + one pass, whose duration
is measured here at the same N (median of 3 real passes).
"""

import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil
from django.conf import settings
from django.db import connection
from django.utils import timezone

from runtimes.models import LivenessEvent, Runtime, RuntimeClass
from runtimes.probes import processes as process_probe
from runtimes.probes import tmux as tmux_probe
from runtimes.reconcile import reconcile
from tickets.models import Ticket

ROOT = Path(__file__).resolve().parent.parent.parent
SESSIONS_PER_SOCKET = 50
POLL = 0.003  # seconds between looks for the ledger row
DEADLINE = 30.0  # seconds a death may take before the benchmark calls it missed
SETTLE = 12.0  # seconds after the kills before idle is measured (the watcher's 10 s "changed lately" window)


def percentile(values, fraction):
    ordered = sorted(values)
    if not ordered:
        return None
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def latency_figures(seconds):
    return {
        "n": len(seconds),
        "p50_ms": percentile(seconds, 0.5) * 1000,
        "p95_ms": percentile(seconds, 0.95) * 1000,
        "max_ms": max(seconds) * 1000,
    }


def schedule_figures(interval, pass_seconds):
    """Latency of the schedule alone: a death at a uniform moment in the interval waits for the next
    pass, then that pass's duration."""
    return {
        "n": "computed",
        "p50_ms": (0.5 * interval + pass_seconds) * 1000,
        "p95_ms": (0.95 * interval + pass_seconds) * 1000,
        "max_ms": (interval + pass_seconds) * 1000,
    }


class Fleet:
    """N real workers of one host: tmux panes on private sockets and sleeping processes."""

    def __init__(self, size):
        self.host = f"bench-detect-{size}-{uuid.uuid4().hex[:6]}"
        self.sockets, self.panes, self.processes, self.rows = [], [], [], {}
        self.size = size

    def start(self, ticket):
        tag = uuid.uuid4().hex[:6]
        panes = self.size // 2
        for index in range(panes):
            if index % SESSIONS_PER_SOCKET == 0:
                self.sockets.append(f"crdetect-{tag}-{len(self.sockets)}")
            socket_name, session = self.sockets[-1], f"w{index}"
            tmux_probe.run(socket_name, "new-session", "-d", "-s", session, "-x", "80", "-y", "24", "sleep", "3600")
            if index % SESSIONS_PER_SOCKET == 0:
                tmux_probe.run(socket_name, "set-option", "-g", "remain-on-exit", "on")
                tmux_probe.run(socket_name, "set-option", "-w", "-t", session, "remain-on-exit", "on")
            self.panes.append((socket_name, session))
        for _ in range(self.size - panes):
            self.processes.append(subprocess.Popen(["sleep", "3600"], stdin=subprocess.DEVNULL))
        pane_pids = {}
        for socket_name in self.sockets:
            for pane in tmux_probe.list_panes(socket_name).by_target.values():
                pane_pids[(socket_name, pane.session)] = pane.pid
        now = timezone.now()
        rows = [
            Runtime(ticket=ticket, kind="tmux", handle=f"tmux:{s}:{n}", host=self.host, tmux_socket=s, tmux_target=n,
                    runtime_class=RuntimeClass.TMUX_LIVE, started_at=now, class_changed_at=now)
            for s, n in self.panes
        ] + [
            Runtime(ticket=ticket, kind="process", handle=f"proc:{p.pid}", host=self.host, pid=p.pid,
                    pid_create_time=process_probe.create_time_of(p.pid), runtime_class=RuntimeClass.PROCESS_LIVE,
                    started_at=now, class_changed_at=now)
            for p in self.processes
        ]  # fmt: skip
        created = Runtime.objects.bulk_create(rows, batch_size=500)
        ids = dict(Runtime.objects.filter(host=self.host).values_list("handle", "pk"))
        for row in created:
            row.pk = ids[row.handle]
        # The killable workers, alternating pane / process: (runtime id, pid, process or None).
        pane_victims = [(ids[f"tmux:{s}:{n}"], pane_pids[(s, n)], None) for s, n in self.panes]
        process_victims = [(ids[f"proc:{p.pid}"], p.pid, p) for p in self.processes]
        self.victims = [v for pair in zip(pane_victims, process_victims, strict=False) for v in pair]

    def take(self, count):
        taken, self.victims = self.victims[:count], self.victims[count:]
        return taken

    def close(self):
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait()
        for socket_name in self.sockets:
            with contextlib.suppress(tmux_probe.TmuxError):
                tmux_probe.run(socket_name, "kill-server")


def database_url():
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{db['USER']}{password}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


class WatcherProcess:
    def __init__(self, host, scratch):
        env = {**os.environ, "DATABASE_URL": database_url(), "CONTROLROOM_HOST": host, "PYTHONUNBUFFERED": "1",
               "CONTROLROOM_WATCH_SOCKET": os.path.join(scratch, f"w-{uuid.uuid4().hex[:6]}.sock"),
               "DJANGO_SETTINGS_MODULE": os.environ.get("DJANGO_SETTINGS_MODULE", "controlroom.settings")}  # fmt: skip
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "watch_runtimes", "--host", host],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        self.ready_line = self.process.stdout.readline().strip()
        if not self.ready_line.startswith("Watching"):
            self.stop()
            raise RuntimeError(f"the watcher did not start: {self.ready_line!r}")
        self.ps = psutil.Process(self.process.pid)

    def cpu_seconds(self):
        """CPU time of the watcher and its tmux control clients."""
        total = 0.0
        for process in [self.ps, *self.ps.children(recursive=True)]:
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.communicate()


def recorded(ids):
    """The runtimes among `ids` that have a ledger row (a class change after launch). Raw SQL, so
    looking every few milliseconds takes little of the CPU the watcher needs."""
    table = connection.ops.quote_name(LivenessEvent._meta.db_table)
    marks = ", ".join(["%s"] * len(ids))
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT DISTINCT runtime_id FROM {table} WHERE runtime_id IN ({marks})", list(ids))  # noqa: S608
        return {row[0] for row in cursor.fetchall()}


def kill(victim):
    _, pid, _ = victim
    os.kill(pid, signal.SIGKILL)


def reap(victims):
    for _, _, process in victims:
        if process is not None:
            process.wait()


def wait_recorded(killed_at):
    """Poll until every killed runtime has its row; return {id: seconds from its kill}."""
    seen = {}
    deadline = time.monotonic() + DEADLINE
    while len(seen) < len(killed_at) and time.monotonic() < deadline:
        now = time.monotonic()
        for pk in recorded([pk for pk in killed_at if pk not in seen]):
            seen[pk] = now - killed_at[pk]
        if len(seen) < len(killed_at):
            time.sleep(POLL)
    return seen


def measure_size(ticket, size, idle_seconds, scratch, stdout):
    fleet = Fleet(size)
    watcher = None
    try:
        started = time.perf_counter()
        fleet.start(ticket)
        stdout.write(f"N={size}: {len(fleet.panes)} panes on {len(fleet.sockets)} sockets, "
                     f"{len(fleet.processes)} processes ({time.perf_counter() - started:.1f}s to start)\n")  # fmt: skip
        pass_seconds = []
        for _ in range(3):
            began = time.perf_counter()
            summary = reconcile(host=fleet.host)
            pass_seconds.append(time.perf_counter() - began)
        assert summary.transitions == 0, summary
        pass_s = statistics.median(pass_seconds)

        watcher = WatcherProcess(fleet.host, scratch)
        stdout.write(f"  {watcher.ready_line}\n")
        singles = {}
        for victim in fleet.take(20):
            killed_at = {victim[0]: time.monotonic()}
            kill(victim)
            singles.update(wait_recorded(killed_at))
            reap([victim])
        burst = fleet.take(50)
        killed_at = {}
        for victim in burst:
            killed_at[victim[0]] = time.monotonic()
            kill(victim)
        burst_seen = wait_recorded(killed_at)
        reap(burst)

        # Idle: after the rows changed by the kills have left the watcher's "changed lately" window.
        time.sleep(SETTLE)
        cpu_before, wall_before = watcher.cpu_seconds(), time.monotonic()
        time.sleep(idle_seconds)
        cpu, wall = watcher.cpu_seconds() - cpu_before, time.monotonic() - wall_before
        rss = watcher.ps.memory_info().rss
        interval = settings.CONTROLROOM["RECONCILE_EVERY_MINUTES"] * 60
        schedule = schedule_figures(interval, pass_s)
        watch_single = latency_figures(list(singles.values()))
        return {
            "size": size,
            "sockets": len(fleet.sockets),
            "schedule_interval_s": interval,
            "schedule_pass_ms": pass_s * 1000,
            "schedule": schedule,
            "watcher_single": watch_single,
            "single_missed": 20 - len(singles),
            "watcher_burst": latency_figures(list(burst_seen.values())) if burst_seen else None,
            "burst_missed": len(burst) - len(burst_seen),
            "speedup_p50": schedule["p50_ms"] / watch_single["p50_ms"],
            "idle_cpu_percent": 100 * cpu / wall,
            "idle_seconds": wall,
            "rss_mb": rss / 2**20,
        }
    finally:
        if watcher is not None:
            watcher.stop()
        fleet.close()


def run(sizes, idle_seconds, stdout=sys.stdout):
    """Create a throwaway database, measure each size, destroy it; return the figures."""
    settings_dict = connection.settings_dict
    original_name = settings_dict["NAME"]
    scratch = tempfile.mkdtemp(prefix="crdet-")
    if connection.vendor == "sqlite":
        settings_dict.setdefault("TEST", {})["NAME"] = os.path.join(scratch, "bench.sqlite3")
    else:
        settings_dict.setdefault("TEST", {})["NAME"] = f"crbench_{uuid.uuid4().hex[:8]}"
    connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    try:
        stdout.write(f"database: {connection.vendor} (throwaway {connection.settings_dict['NAME']})\n")
        ticket = Ticket.objects.create(key="BENCH-1", title="bench", state="in_progress")
        figures = {"vendor": connection.vendor, "cpus": os.cpu_count(), "sizes": []}
        for size in sizes:
            figures["sizes"].append(measure_size(ticket, size, idle_seconds, scratch, stdout))
    finally:
        connection.creation.destroy_test_db(original_name, verbosity=0)
        for name in os.listdir(scratch):
            os.unlink(os.path.join(scratch, name))
        os.rmdir(scratch)
    return figures


def report(figures):
    lines = [
        f"{'N':>5}  {'who':<18} {'p50 ms':>9} {'p95 ms':>9} {'max ms':>9}  notes",
    ]
    for row in figures["sizes"]:
        s, w, b = row["schedule"], row["watcher_single"], row["watcher_burst"]
        lines.append(
            f"{row['size']:>5}  {'schedule (computed)':<18} {s['p50_ms']:>9.0f} {s['p95_ms']:>9.0f} {s['max_ms']:>9.0f}"
            f"  every {row['schedule_interval_s']}s + a {row['schedule_pass_ms']:.0f} ms pass"
        )
        lines.append(
            f"{'':>5}  {'watcher, 20 single':<18} {w['p50_ms']:>9.1f} {w['p95_ms']:>9.1f} {w['max_ms']:>9.1f}"
            f"  {row['speedup_p50']:.0f}x the schedule's p50; missed {row['single_missed']}"
        )
        if b:
            lines.append(
                f"{'':>5}  {'watcher, burst 50':<18} {b['p50_ms']:>9.1f} {b['p95_ms']:>9.1f} {b['max_ms']:>9.1f}"
                f"  missed {row['burst_missed']}"
            )
        lines.append(
            f"{'':>5}  idle: {row['idle_cpu_percent']:.3f}% of a core over {row['idle_seconds']:.0f}s, "
            f"RSS {row['rss_mb']:.1f} MB ({row['sockets']} tmux sockets)"
        )
    return "\n".join(lines)


def write_json(figures, path):
    with open(path, "w") as handle:
        json.dump(figures, handle, indent=2, default=str)
