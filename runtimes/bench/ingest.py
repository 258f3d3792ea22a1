"""The ingest benchmark: a program, not a test. Ratios are measured against a baseline in the same run.

On a throwaway database (Django's test-database machinery) it starts Control Room as one server
process — granian, one WSGI worker process with `--threads` threads (the production server the
README names), DEBUG off, persistent database connections — and posts Claude hook reports to
/api/v1/runtimes/{id}/claude-hook, each one a class change (a permission prompt, then a sign of
work, for each runtime in turn), so each report is one committed ledger row. Two runs: one client
sending one report after another, then `--clients` clients at once, each over its own keep-alive
connection and its own share of the runtimes (so each runtime's reports stay in order). It
measures reports per second sustained and the latency from sending the POST to its answer (which
comes after the ledger row is committed), p50 and p99; then checks nothing was lost (one ledger
row per report). The baseline is the same reports applied in-process, one at a time, through the
same service (runtimes.intake.reports.record_signal), without HTTP, with and without the
notification step after each commit (runtimes.notify.service.after_transitions).
"""

import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from unittest import mock

import psutil
from django.conf import settings
from django.db import connection
from django.utils import timezone

from runtimes.intake import hooks, reports, tokens
from runtimes.models import LivenessEvent, Runtime, RuntimeClass
from runtimes.notify import service as notify
from tickets.models import Ticket

HOST = "bench-host"
ROOT = Path(__file__).resolve().parents[2]
SIGNALS = (
    {"hook_event_name": "Notification", "notification_type": "permission_prompt",
     "message": "Claude needs your permission to use Bash"},
    {"hook_event_name": "PreToolUse", "tool_name": "Bash", "tool_input": {"command": "make test"}},
)  # fmt: skip


def hook_input(index):
    base = {"session_id": "0a1b2c3d-4e5f-4a6b-8c9d-0e1f2a3b4c5d", "transcript_path": "/home/u/.claude/projects/t.jsonl",
            "cwd": "/work/repo", "permission_mode": "default"}  # fmt: skip
    return {**base, **SIGNALS[index % 2]}


def make_runtimes(count, tag):
    ticket = Ticket.objects.create(key=f"BENCH-{tag}", title="ingest bench", state=Ticket.State.IN_PROGRESS)
    now = timezone.now()
    return Runtime.objects.bulk_create(
        [
            Runtime(ticket=ticket, kind=Runtime.Kind.TMUX, handle=f"tmux:bench-{tag}-{i}", host=HOST,
                    tmux_target=f"bench-{tag}-{i}", runtime_class=RuntimeClass.TMUX_LIVE, class_reason="pane-alive",
                    started_at=now, class_changed_at=now)
            for i in range(count)
        ]
    )  # fmt: skip


def database_url():
    """A URL for the throwaway database the child server must use."""
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def start_server(port, threads):
    env = {
        **os.environ, "DATABASE_URL": database_url(), "DEBUG": "0", "SECRET_KEY": os.urandom(24).hex(),
        "ALLOWED_HOSTS": "127.0.0.1", "SECURE_SSL_REDIRECT": "0", "CONTROLROOM_HOST": "bench-server",
        "LOG_LEVEL": "WARNING", "CONN_MAX_AGE": "60",
    }  # fmt: skip
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("granian")), "--interface", "wsgi", "controlroom.wsgi:application",
         "--workers", "1", "--blocking-threads", str(threads), "--host", "127.0.0.1", "--port", str(port),
         "--no-ws", "--log-level", "warning"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            probe = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            probe.request("GET", "/api/v1/openapi.json")
            if probe.getresponse().status == 200:
                return server
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError("the benchmark server did not answer within 60 s")


def server_cpu(server):
    """CPU seconds (user + system) the server has used: granian's main process and its worker. Unlike
    wall time, this hardly moves when other work shares the machine."""
    processes = [psutil.Process(server.pid), *psutil.Process(server.pid).children(recursive=True)]
    return sum(sum(p.cpu_times()[:2]) for p in processes)


class Client:
    """One keep-alive connection sending reports for its own runtimes, one after another."""

    def __init__(self, port, token, runtimes):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.runtimes = runtimes
        self.latencies, self.failures, self.changed = [], 0, 0

    def send(self, count):
        for i in range(count):
            runtime = self.runtimes[i % len(self.runtimes)]
            body = json.dumps(hook_input(i // len(self.runtimes)))
            started = time.perf_counter()
            self.connection.request("POST", f"/api/v1/runtimes/{runtime.pk}/claude-hook", body, self.headers)
            response = self.connection.getresponse()
            answer = response.read()
            self.latencies.append(time.perf_counter() - started)
            ok = response.status == 200
            self.failures += not ok
            self.changed += bool(ok and json.loads(answer).get("changed"))
        self.connection.close()


def percentile(samples, fraction):
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def measure_http(port, runtimes, token, count, clients):
    """`count` reports from `clients` concurrent clients, each with an equal share of the runtimes
    (each runtime's reports in order, an even number per runtime so every runtime ends live)."""
    shares = [runtimes[c::clients] for c in range(clients)]
    per_client = [2 * len(share) * max(1, round(count / clients / (2 * len(share)))) for share in shares]
    workers = [Client(port, token, share) for share in shares]
    threads = [threading.Thread(target=w.send, args=(n,)) for w, n in zip(workers, per_client, strict=True)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = time.perf_counter() - started
    latencies = [latency for w in workers for latency in w.latencies]
    sent = sum(per_client)
    return {"clients": clients, "reports": sent, "seconds": total, "per_second": sent / total,
            "failures": sum(w.failures for w in workers), "changed": sum(w.changed for w in workers),
            "p50_ms": statistics.median(latencies) * 1000, "p99_ms": percentile(latencies, 0.99) * 1000,
            "max_ms": max(latencies) * 1000}  # fmt: skip


def measure_direct(runtimes, count):
    started = time.perf_counter()
    for i in range(count):
        runtime = runtimes[i % len(runtimes)]
        signal = hooks.claude_hook(hook_input(i // len(runtimes)), timezone.now())
        reports.record_signal(runtime.pk, signal, LivenessEvent.Source.HOOK)
    total = time.perf_counter() - started
    return {"reports": count, "seconds": total, "per_second": count / total}


def run(count, runtime_count, port, clients=16, threads=16, stdout=sys.stdout):
    old_name = connection.settings_dict["NAME"]
    connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    try:
        settings.CONTROLROOM_HOST = "bench-client"  # reports from elsewhere: no harvest probe here
        direct_runtimes = make_runtimes(runtime_count, "1")
        stdout.write(f"{connection.vendor}: {count} reports in-process (baseline)…\n")
        direct = measure_direct(direct_runtimes, count)
        quiet_runtimes = make_runtimes(runtime_count, "3")
        with mock.patch.object(notify, "after_transitions"):  # what the notification step costs
            without_notify = measure_direct(quiet_runtimes, count)
        http_runtimes = make_runtimes(runtime_count, "2")
        _, token = tokens.mint("bench", host=HOST)
        server = start_server(port, threads)
        try:
            measure_http(port, http_runtimes, token, 2 * runtime_count, clients)  # warm-up: every runtime live again
            runs = []
            for concurrent in (1, clients):
                before = LivenessEvent.objects.filter(runtime__in=http_runtimes).count()
                stdout.write(f"{connection.vendor}: {count} reports over HTTP from {concurrent} client(s)…\n")
                cpu_before = server_cpu(server)
                figures = measure_http(port, http_runtimes, token, count, concurrent)
                cpu = server_cpu(server) - cpu_before
                rows = LivenessEvent.objects.filter(runtime__in=http_runtimes).count() - before
                runs.append({**figures, "ledger_rows": rows, "lost": figures["reports"] - rows,
                             "server_cpu_ms": cpu * 1000 / figures["reports"]})  # fmt: skip
        finally:
            server.terminate()
            server.wait(timeout=30)
        return {
            "database": connection.vendor,
            "runtimes": runtime_count,
            "server_threads": threads,
            "http": runs,
            "direct": direct,
            "direct_without_notifications": without_notify,
            "lost": sum(r["lost"] for r in runs),
            "failures": sum(r["failures"] for r in runs),
        }
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)


def report(figures):
    d, quiet = figures["direct"], figures["direct_without_notifications"]
    lines = [
        "| database | clients | reports | reports/s (HTTP) | p50 ms | p99 ms | max ms | failures | ledger rows "
        "| lost | server CPU ms / report | × in-process |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for h in figures["http"]:
        lines.append(
            f"| {figures['database']} | {h['clients']} | {h['reports']} | {h['per_second']:.0f} | {h['p50_ms']:.1f} "
            f"| {h['p99_ms']:.1f} | {h['max_ms']:.1f} | {h['failures']} | {h['ledger_rows']} | {h['lost']} "
            f"| {h['server_cpu_ms']:.2f} | {h['per_second'] / d['per_second']:.2f} |"
        )
    lines.append(
        f"In-process baseline, one report at a time: {d['per_second']:.0f} reports/s "
        f"({quiet['per_second']:.0f} without the notification step)."
    )
    return "\n".join(lines)
