"""The reconcile benchmark: a program, not a test. Ratios are measured against baselines in the same run.

On a throwaway database (created and destroyed with Django's test-database machinery), with real
tmux panes on a private socket and real sleeping processes, it measures per size:
  floor   one raw `tmux list-panes -a` + the psutil identity checks (what any pass must pay);
  steady  a reconcile pass with no transitions;
  churn   a pass where 10% of the workers died (real kills, so real transitions);
  naive   one `tmux has-session` / process lookup per runtime and one save() per row;
plus SQL statements and peak Python memory per pass; then the admin pages at 100,000 runtimes and
1,000,000 ledger events: time, query count, and the indexes the database uses.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from datetime import timedelta

import psutil
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext, override_settings
from django.urls import reverse
from django.utils import timezone

from runtimes import reconcile as reconcile_module
from runtimes.models import AttentionEpisode, Delivery, LivenessEvent, Runtime, RuntimeClass
from runtimes.notify import service as notify
from runtimes.probes import processes as process_probe
from runtimes.probes import tmux as tmux_probe
from tickets.models import Ticket

HOST = "bench-host"
FINAL = [RuntimeClass.EXITED, RuntimeClass.KILLED_BY_CONTROLLER, RuntimeClass.COMPLETED_BY_CONTROLLER]


def timed(function, repeats):
    """Median seconds of `repeats` calls, and the last result."""
    samples, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples), result


class Fleet:
    """n real workers: n/2 tmux panes on a private socket, n/2 sleeping processes, and their rows."""

    def __init__(self):
        self.tag = uuid.uuid4().hex[:8]
        self.socket = f"crbench-{self.tag}"
        self.sessions, self.processes, self.runtimes = [], [], []

    def start(self, ticket, size):
        self.sessions = [f"cr-bench-{i}" for i in range(size // 2)]
        for session in self.sessions:
            tmux_probe.run(self.socket, "new-session", "-d", "-s", session, "sleep", "3600")
        for _ in range(size - len(self.sessions)):
            self.processes.append(
                subprocess.Popen(["sleep", "3600"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
        now = timezone.now()
        rows = [
            Runtime(ticket=ticket, kind="tmux", handle=self.handle_of(s), host=HOST, tmux_socket=self.socket,
                    tmux_target=s, started_at=now, class_changed_at=now)
            for s in self.sessions
        ] + [
            Runtime(ticket=ticket, kind="process", handle=self.handle_of(p), host=HOST, pid=p.pid,
                    pid_create_time=process_probe.create_time_of(p.pid), started_at=now, class_changed_at=now)
            for p in self.processes
        ]  # fmt: skip
        self.runtimes = Runtime.objects.bulk_create(rows, batch_size=1000)

    def handle_of(self, worker):
        if isinstance(worker, str):
            return f"tmux:{worker}@{self.tag}"
        return f"hermes-bg:proc_{self.tag}{worker.pid:04x}"

    def kill_tenth(self):
        """Kill 10% of the workers (half panes, half processes); return their runtime ids."""
        count = max(len(self.runtimes) // 20, 1)
        victims = self.sessions[:count]
        for session in victims:
            tmux_probe.run(self.socket, "kill-session", "-t", session)
        for process in self.processes[:count]:
            process.kill()
            process.wait()
        handles = [self.handle_of(s) for s in victims] + [self.handle_of(p) for p in self.processes[:count]]
        return list(Runtime.objects.filter(host=HOST, handle__in=handles).values_list("pk", flat=True))

    def close(self):
        tmux_probe.run(self.socket, "kill-server")
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        Runtime.objects.filter(host=HOST).exclude(runtime_class__in=FINAL).update(runtime_class=RuntimeClass.EXITED)


def probe_floor(fleet):
    """The irreducible cost: one raw list-panes, and the identity checks of the tracked pids."""
    argv = [settings.CONTROLROOM["TMUX_BIN"], "-L", fleet.socket, "list-panes", "-a", "-F", tmux_probe.PANE_FORMAT]
    subprocess.run(argv, capture_output=True, check=True)
    for runtime in fleet.runtimes:
        if runtime.kind == "process":
            process_probe.probe_one(runtime.pid, runtime.pid_create_time)


def naive_pass(fleet):
    """What a per-runtime reconciler does: one tmux call or lookup per runtime, one save per row.
    (It does less than a real pass: no classification, no ledger; a generous baseline.)"""
    for runtime in Runtime.objects.filter(host=HOST).exclude(runtime_class__in=FINAL).select_related("ticket"):
        if runtime.kind == "tmux":
            alive = tmux_probe.run(runtime.tmux_socket, "has-session", "-t", runtime.tmux_target)
            runtime.class_message = "alive" if alive.returncode == 0 else "missing"
        else:
            runtime.class_message = process_probe.probe_one(runtime.pid, runtime.pid_create_time).state
        runtime.last_seen_at = timezone.now()
        runtime.save()


def measure_size(ticket, size, repeats):
    fleet = Fleet()
    try:
        fleet.start(ticket, size)
        reconcile_module.reconcile(host=HOST)  # pending -> live, once
        floor, _ = timed(lambda: probe_floor(fleet), repeats)
        events_before = LivenessEvent.objects.count()
        with CaptureQueriesContext(connection) as queries:
            reconcile_module.reconcile(host=HOST)
        steady_sql = len(queries)
        steady, summary = timed(lambda: reconcile_module.reconcile(host=HOST), repeats)
        with override_settings(CONTROLROOM={**settings.CONTROLROOM, "LAST_SEEN_REFRESH": 0}):
            steady_seen, _ = timed(lambda: reconcile_module.reconcile(host=HOST), repeats)
        steady_events = LivenessEvent.objects.count() - events_before
        tracemalloc.start()
        reconcile_module.reconcile(host=HOST)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()

        victims = fleet.kill_tenth()
        live = {"tmux": RuntimeClass.TMUX_LIVE, "process": RuntimeClass.PROCESS_LIVE}

        def churn_pass():
            for kind, runtime_class in live.items():  # put the victims back to live, so every pass flips them
                Runtime.objects.filter(pk__in=victims, kind=kind).update(runtime_class=runtime_class)
            with CaptureQueriesContext(connection) as churn_queries:
                result = reconcile_module.reconcile(host=HOST)
            return result, len(churn_queries)

        churn, (churn_summary, churn_sql) = timed(churn_pass, repeats)
        # The pass's notification step alone, with the victims' attention episodes open and nothing
        # changing (what every scheduled pass pays for notifications).
        notify_step, _ = timed(lambda: notify.after_pass(timezone.now()), repeats)
        with CaptureQueriesContext(connection) as notify_queries:
            notify.after_pass(timezone.now())
        open_episodes = AttentionEpisode.objects.exclude(state=AttentionEpisode.State.CLOSED).count()
        naive, _ = timed(lambda: naive_pass(fleet), 1)
    finally:
        fleet.close()
    return {
        "active_runtimes": size,
        "floor_ms": floor * 1000,
        "steady_ms": steady * 1000,
        "steady_vs_floor": steady / floor,
        "steady_seen_ms": steady_seen * 1000,
        "steady_seen_vs_floor": steady_seen / floor,
        "naive_ms": naive * 1000,
        "naive_vs_steady": naive / steady,
        "churn_ms": churn * 1000,
        "churn_transitions": churn_summary.transitions,
        "steady_sql": steady_sql,
        "churn_sql": churn_sql,
        "notify_ms": notify_step * 1000,
        "notify_vs_steady": notify_step / steady,
        "notify_sql": len(notify_queries),
        "open_episodes": open_episodes,
        "steady_ledger_rows": steady_events,
        "steady_transitions": summary.transitions,
        "peak_python_mb": peak / 2**20,
        "rss_mb": psutil.Process().memory_info().rss / 2**20,
    }


def make_history(ticket_count, runtime_count, event_count):
    """Historical rows, written in bulk: tickets, settled runtimes, and their ledger."""
    now = timezone.now()
    tickets = Ticket.objects.bulk_create(
        [Ticket(key=f"HIST-{i + 1}", title=f"history {i}", state="done", closed_at=now) for i in range(ticket_count)],
        batch_size=2000,
    )
    per_ticket = runtime_count // ticket_count
    outcomes = ["completed", "partial-useful", "failed"]
    Runtime.objects.bulk_create(
        [
            Runtime(ticket=tickets[i // per_ticket], kind="tmux", handle=f"tmux:hist-{i}", host="history",
                    tmux_target=f"hist-{i}", runtime_class=FINAL[i % 3], exit_outcome=outcomes[i % 3],
                    started_at=now - timedelta(minutes=i), class_changed_at=now)
            for i in range(runtime_count)
        ],
        batch_size=5000,
    )  # fmt: skip
    per_runtime = max(event_count // runtime_count, 1)
    with connection.cursor() as cursor:
        # One INSERT … SELECT: each historical runtime gets `per_runtime` ledger rows.
        cursor.execute(
            "CREATE TEMPORARY TABLE bench_n (n integer)"
            if connection.vendor != "postgresql"
            else "CREATE TEMPORARY TABLE bench_n (n integer) ON COMMIT PRESERVE ROWS"
        )
        cursor.executemany("INSERT INTO bench_n (n) VALUES (%s)", [(n,) for n in range(per_runtime)])
        cursor.execute(
            "INSERT INTO runtimes_livenessevent (runtime_id, at, from_class, to_class, reason, message, source, host,"
            " observed) SELECT r.id, r.started_at, 'pending', r.runtime_class, 'launched', '', 'reconciler', 'history',"
            " '{}' FROM runtimes_runtime r CROSS JOIN bench_n WHERE r.host = 'history'"
        )
        cursor.execute("DROP TABLE bench_n")
    # Notification history: a closed episode and a sent delivery for every tenth runtime.
    episodes = AttentionEpisode.objects.bulk_create(
        [
            AttentionEpisode(runtime_id=pk, state="closed", opened_at=now, closed_at=now, resolved_at=now,
                             runtime_class="tmux-missing", reason="session-missing", end_class="exited")
            for pk in Runtime.objects.filter(host="history").values_list("pk", flat=True)[::10]
        ],
        batch_size=5000,
    )  # fmt: skip
    Delivery.objects.bulk_create(
        [
            Delivery(channel_key="env:bench", target="bench (json://…)", runtime_id=e.runtime_id, episode=e,
                     kind="opened", title="[Control Room] needs attention", body="…", status="sent", attempts=1)
            for e in episodes
        ],
        batch_size=5000,
    )  # fmt: skip
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")


def explain(sql, params):
    prefix = "EXPLAIN QUERY PLAN " if connection.vendor == "sqlite" else "EXPLAIN "
    with connection.cursor() as cursor:
        cursor.execute(prefix + sql, params)
        return " | ".join(str(row[-1]) for row in cursor.fetchall())


def indexes_used(plan):
    names = [word.strip('",()') for word in plan.replace("|", " ").split() if word.strip('",()').endswith("_idx")]
    named = [word for word in plan.replace("|", " ").split() if "pkey" in word or "autoindex" in word]
    return sorted(set(names + named))


def measure_admin(repeats):
    user = get_user_model().objects.create_superuser("bench-admin", password=uuid.uuid4().hex)
    client = Client()
    client.force_login(user)
    some_runtime = Runtime.objects.filter(host="history").order_by("pk").first()
    # The console's attention lane needs something to show: 50 missing workers on a working ticket.
    attention_ticket = Ticket.objects.create(key="BENCH-2", title="attention", state="in_progress")
    Runtime.objects.bulk_create(
        [
            Runtime(ticket=attention_ticket, kind="tmux", handle=f"tmux:gone-{i}", host="history",
                    tmux_target=f"gone-{i}", runtime_class="tmux-missing", class_reason="session-missing")
            for i in range(50)
        ]
    )  # fmt: skip
    pages = {
        "runtime changelist": reverse("admin:runtimes_runtime_changelist"),
        "runtime changelist ?runtime_class=exited": reverse("admin:runtimes_runtime_changelist")
        + "?runtime_class=exited",
        "runtime changelist ?attention=yes": reverse("admin:runtimes_runtime_changelist") + "?attention=yes",
        "ticket changelist": reverse("admin:tickets_ticket_changelist"),
        "runtime change page": reverse("admin:runtimes_runtime_change", args=[some_runtime.pk]),
        "ledger changelist": reverse("admin:runtimes_livenessevent_changelist"),
        "admin index": reverse("admin:index"),
        "console": reverse("console:index"),
        "console attention lane (htmx part)": reverse("console:attention"),
        "console fleet strip (htmx part)": reverse("console:fleet"),
        "runtime page live part (htmx part)": reverse("console:runtime-live", args=[some_runtime.pk]),
        "ticket page (activity feed)": reverse("admin:tickets_ticket_change", args=[some_runtime.ticket_id]),
        "delivery changelist": reverse("admin:runtimes_delivery_changelist"),
        "attention episode changelist": reverse("admin:runtimes_attentionepisode_changelist"),
    }
    results = []
    for name, url in pages.items():
        assert client.get(url).status_code == 200, url
        seconds, _ = timed(lambda url=url: client.get(url), repeats)
        with CaptureQueriesContext(connection) as queries:
            client.get(url)
        plans = [explain(q["sql"], None) for q in queries.captured_queries if q["sql"].startswith("SELECT")]
        used = sorted({name for plan in plans for name in indexes_used(plan)})
        results.append({"page": name, "ms": seconds * 1000, "queries": len(queries), "indexes": used})
    return results


def run(sizes, history_runtimes, history_events, repeats, admin=True, stdout=sys.stdout):
    """Create a throwaway database, measure, destroy it; return the figures."""
    settings_dict = connection.settings_dict
    original_name = settings_dict["NAME"]
    scratch = None
    if connection.vendor == "sqlite":
        scratch = tempfile.mkdtemp(prefix="crbench-")
        settings_dict.setdefault("TEST", {})["NAME"] = os.path.join(scratch, "bench.sqlite3")
    else:
        settings_dict.setdefault("TEST", {})["NAME"] = f"crbench_{uuid.uuid4().hex[:8]}"
    connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    try:
        with override_settings(ALLOWED_HOSTS=["testserver"], SECURE_SSL_REDIRECT=False, DEBUG=False):
            stdout.write(f"database: {connection.vendor} (throwaway {connection.settings_dict['NAME']})\n")
            started = time.perf_counter()
            make_history(max(history_runtimes // 10, 1), history_runtimes, history_events)
            stdout.write(
                f"history: {Runtime.objects.count():,} runtimes, {LivenessEvent.objects.count():,} ledger events"
                f" ({time.perf_counter() - started:.1f}s to build)\n"
            )
            ticket = Ticket.objects.create(key="BENCH-1", title="bench", state="in_progress")
            figures = {"vendor": connection.vendor, "sizes": [], "admin": []}
            for size in sizes:
                figures["sizes"].append(measure_size(ticket, size, repeats))
            if admin:
                figures["admin"] = measure_admin(repeats)
    finally:
        connection.creation.destroy_test_db(original_name, verbosity=0)
    return figures


def report(figures):
    lines = [
        "active  floor ms  steady ms  steady/floor  +seen ms  +seen/floor  naive ms  naive/steady  churn ms  "
        "transitions  SQL steady  SQL churn  ledger rows (steady)  peak MB  notify ms (episodes)  notify/steady"
        "  SQL notify",
    ]
    for row in figures["sizes"]:
        lines.append(
            f"{row['active_runtimes']:>6}  {row['floor_ms']:>8.1f}  {row['steady_ms']:>9.1f}  "
            f"{row['steady_vs_floor']:>12.2f}  {row['steady_seen_ms']:>8.1f}  {row['steady_seen_vs_floor']:>11.2f}  "
            f"{row['naive_ms']:>8.0f}  {row['naive_vs_steady']:>12.1f}  "
            f"{row['churn_ms']:>8.1f}  {row['churn_transitions']:>11}  {row['steady_sql']:>10}  "
            f"{row['churn_sql']:>9}  {row['steady_ledger_rows']:>20}  {row['peak_python_mb']:>7.1f}  "
            f"{row['notify_ms']:>9.1f} ({row['open_episodes']:>5})  {row['notify_vs_steady']:>13.2f}  "
            f"{row['notify_sql']:>10}"
        )
    if figures["admin"]:
        lines.append("")
        lines.append(f"{'admin page':<45} {'ms':>7} {'queries':>7}  indexes used")
        for row in figures["admin"]:
            lines.append(f"{row['page']:<45} {row['ms']:>7.1f} {row['queries']:>7}  {', '.join(row['indexes'])}")
    return "\n".join(lines)


def write_json(figures, path):
    with open(path, "w") as handle:
        json.dump(figures, handle, indent=2, default=str)
