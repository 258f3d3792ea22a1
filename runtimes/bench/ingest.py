"""The ingest benchmark: a program, not a test. Ratios are measured against a baseline in the same run.

On a throwaway database (Django's test-database machinery) it starts Control Room as one server
process (`manage.py runserver --noreload`, DEBUG off) and posts Claude hook reports to
/api/v1/runtimes/{id}/claude-hook one after another, each one a class change (a permission prompt,
then a sign of work, round-robin over the runtimes), so each report is one committed ledger row.
It measures reports per second sustained, and the latency from sending the POST to its answer
(which comes after the ledger row is committed), p50 and p99; then checks nothing was lost (one
ledger row per report). The baseline is the same reports applied in-process through the same
service (runtimes.intake.reports.record_signal), without HTTP, and the same again with the
notification step after each commit (runtimes.notify.service.after_transitions) left out, to show
its share.
"""

import http.client
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

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


def start_server(port):
    env = {
        **os.environ, "DATABASE_URL": database_url(), "DEBUG": "0", "SECRET_KEY": os.urandom(24).hex(),
        "ALLOWED_HOSTS": "127.0.0.1", "SECURE_SSL_REDIRECT": "0", "CONTROLROOM_HOST": "bench-server",
        "LOG_LEVEL": "WARNING",
    }  # fmt: skip
    server = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", "--noreload", "--skip-checks", f"127.0.0.1:{port}"],
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


def post(port, path, token, body):
    connection_ = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    started = time.perf_counter()
    connection_.request("POST", path, body, {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    response = connection_.getresponse()
    answer = response.read()
    elapsed = time.perf_counter() - started
    connection_.close()
    return response.status, json.loads(answer), elapsed


def percentile(samples, fraction):
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def measure_http(port, runtimes, token, count):
    latencies, failures, changed = [], 0, 0
    started = time.perf_counter()
    for i in range(count):
        runtime = runtimes[i % len(runtimes)]
        body = json.dumps(hook_input(i // len(runtimes)))
        status, answer, elapsed = post(port, f"/api/v1/runtimes/{runtime.pk}/claude-hook", token, body)
        latencies.append(elapsed)
        failures += status != 200
        changed += bool(status == 200 and answer.get("changed"))
    total = time.perf_counter() - started
    return {"reports": count, "seconds": total, "per_second": count / total, "failures": failures,
            "changed": changed, "p50_ms": statistics.median(latencies) * 1000,
            "p99_ms": percentile(latencies, 0.99) * 1000, "max_ms": max(latencies) * 1000}  # fmt: skip


def measure_direct(runtimes, count):
    started = time.perf_counter()
    for i in range(count):
        runtime = runtimes[i % len(runtimes)]
        signal = hooks.claude_hook(hook_input(i // len(runtimes)), timezone.now())
        reports.record_signal(runtime, signal, LivenessEvent.Source.HOOK)
    total = time.perf_counter() - started
    return {"reports": count, "seconds": total, "per_second": count / total}


def run(count, runtime_count, port, stdout=sys.stdout):
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
        server = start_server(port)
        try:
            measure_http(port, http_runtimes, token, 2 * runtime_count)  # warm-up: every runtime back to live
            before = LivenessEvent.objects.filter(runtime__in=http_runtimes).count()
            stdout.write(f"{connection.vendor}: {count} reports over HTTP…\n")
            over_http = measure_http(port, http_runtimes, token, count)
        finally:
            server.terminate()
            server.wait(timeout=30)
        rows = LivenessEvent.objects.filter(runtime__in=http_runtimes, source="hook").count() - before
        return {
            "database": connection.vendor,
            "runtimes": runtime_count,
            "http": over_http,
            "direct": direct,
            "direct_without_notifications": without_notify,
            "ledger_rows": rows,
            "lost": count - rows,
            "http_vs_direct": over_http["per_second"] / direct["per_second"],
        }
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)


def report(figures):
    h, d = figures["http"], figures["direct"]
    return (
        "| database | reports | reports/s (HTTP) | p50 ms | p99 ms | max ms | failures | ledger rows | lost "
        "| reports/s in-process | HTTP / in-process | in-process without notifications |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
        f"| {figures['database']} | {h['reports']} | {h['per_second']:.0f} | {h['p50_ms']:.1f} | {h['p99_ms']:.1f} "
        f"| {h['max_ms']:.1f} | {h['failures']} | {figures['ledger_rows']} | {figures['lost']} "
        f"| {d['per_second']:.0f} | {figures['http_vs_direct']:.2f} "
        f"| {figures['direct_without_notifications']['per_second']:.0f} |"
    )
