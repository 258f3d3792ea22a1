"""Mirror Hermes background processes (`$HERMES_HOME/processes.json`) as `hermes-bg:proc_…` runtimes.

Hermes writes only running processes to that file (a JSON list, rewritten atomically), several
Hermes processes sharing a home overwrite each other's entries, and exits are never written. So an
entry that vanishes is not an exit: the (pid, create time) probe of the reconciler decides. Only
`pid_scope: "host"` entries are host pids; `host_start_time` is the kernel's start ticks on Linux
(create time = boot time + ticks / SC_CLK_TCK) and `round(create_time * 100)` elsewhere.
"""

import json
import os
import re
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psutil
from django.conf import settings
from django.utils import timezone

from runtimes import liveness
from runtimes.intake import reports
from runtimes.models import LivenessEvent, Provider, Runtime
from runtimes.probes import processes as process_probe
from tickets.models import Ticket

MAX_FILE_BYTES = 4 * 1024 * 1024
SESSION_ID = re.compile(r"^proc_[0-9a-f]{12}\Z")
# A ticket key anywhere in a field (TICKET_KEY_PATTERN without its anchors).
TICKET_KEY = re.compile(r"(?<![A-Za-z0-9])[A-Z][A-Z0-9]{1,9}-[1-9][0-9]{0,7}(?![0-9])")
TICKET_FIELDS = ("session_key", "task_id", "cwd", "command")


@dataclass(frozen=True)
class Entry:
    session_id: str
    pid: int
    create_time: float
    cwd: str
    started_at: float | None
    ticket_keys: tuple  # candidate keys, in field order

    @property
    def handle(self):
        return f"hermes-bg:{self.session_id}"


@dataclass
class ImportSummary:
    homes: int = 0
    created: int = 0
    known: int = 0
    skipped: list = field(default_factory=list)  # (where, why)
    errors: list = field(default_factory=list)  # (home, why): a file that could not be read

    def as_dict(self):
        return {"homes": self.homes, "created": self.created, "known": self.known,
                "skipped": [list(s) for s in self.skipped], "errors": [list(e) for e in self.errors]}  # fmt: skip


def create_time_from_ticks(ticks, boot_time, clock_ticks, linux=True):
    """A process's create time from Hermes's host_start_time."""
    return boot_time + ticks / clock_ticks if linux else ticks / 100


def parse_entries(text, boot_time, clock_ticks, linux=True):
    """The host-pid entries of a processes.json text, and (session, why) for each one skipped.
    Pure. Raises ValueError when the text is not a JSON list."""
    data = json.loads(text)
    if not isinstance(data, list):
        raise ValueError("processes.json is not a JSON list")
    entries, skipped = [], []
    for index, raw in enumerate(data):
        if not isinstance(raw, dict):
            skipped.append((f"entry {index}", "not an object"))
            continue
        session = raw.get("session_id")
        where = session if isinstance(session, str) else f"entry {index}"
        if not isinstance(session, str) or not SESSION_ID.match(session):
            skipped.append((str(where)[:40], "session_id is not proc_ + 12 hex digits"))
            continue
        if raw.get("pid_scope", "host") != "host":
            skipped.append((session, f"pid_scope {raw.get('pid_scope')!r}: not a host pid"))
            continue
        pid, ticks = raw.get("pid"), raw.get("host_start_time")
        if not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid < 2**31:
            skipped.append((session, "no valid pid"))
            continue
        if not isinstance(ticks, int | float) or isinstance(ticks, bool) or ticks < 0:
            skipped.append((session, "no host_start_time"))
            continue
        started = raw.get("started_at")
        started = float(started) if isinstance(started, int | float) and not isinstance(started, bool) else None
        keys = []
        for name in TICKET_FIELDS:
            value = raw.get(name)
            if isinstance(value, str):
                keys += TICKET_KEY.findall(value[:4096])
        entries.append(
            Entry(
                session_id=session,
                pid=pid,
                create_time=create_time_from_ticks(ticks, boot_time, clock_ticks, linux),
                cwd=raw["cwd"][:1024] if isinstance(raw.get("cwd"), str) else "",
                started_at=float(started)
                if isinstance(started, int | float) and not isinstance(started, bool)
                else None,
                ticket_keys=tuple(dict.fromkeys(keys)),
            )
        )
    return entries, skipped


def read_bounded(path):
    with open(path, "rb") as handle:
        data = handle.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ValueError(f"larger than {MAX_FILE_BYTES} bytes")
    return data.decode("utf-8", errors="replace")


def _ticket_for(entry, tickets_by_key, default):
    for key in entry.ticket_keys:
        if key in tickets_by_key:
            return tickets_by_key[key]
    return default


def _started(entry):
    if entry.started_at is None:
        return None
    try:
        return datetime.fromtimestamp(entry.started_at, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def import_homes(homes, default_ticket=None, now=None):
    """Register every running host-pid entry of each home's processes.json (idempotent). One
    unreadable or malformed file is reported in the summary and never stops the others."""
    now = now or timezone.now()
    summary = ImportSummary()
    boot_time, clock_ticks = psutil.boot_time(), os.sysconf("SC_CLK_TCK")
    linux = sys.platform.startswith("linux")
    for home in homes:
        summary.homes += 1
        path = Path(home) / "processes.json"
        try:
            entries, skipped = parse_entries(read_bounded(path), boot_time, clock_ticks, linux)
        except FileNotFoundError:
            continue  # a home without background processes
        except (OSError, ValueError) as error:
            summary.errors.append((str(home), f"{path}: {type(error).__name__}: {error}"[:300]))
            continue
        summary.skipped += skipped
        keys = {key for entry in entries for key in entry.ticket_keys}
        tickets_by_key = {t.key: t for t in Ticket.objects.filter(key__in=keys)} if keys else {}
        for entry in entries:
            _import_entry(entry, tickets_by_key, default_ticket, summary, now)
    return summary


def _import_entry(entry, tickets_by_key, default_ticket, summary, now):
    known = Runtime.objects.filter(host=settings.CONTROLROOM_HOST, handle=entry.handle).order_by("-pk").first()
    if (
        known
        and known.pid == entry.pid
        and known.pid_create_time is not None
        and (abs(known.pid_create_time - entry.create_time) <= process_probe.CREATE_TIME_TOLERANCE)
    ):
        summary.known += 1
        return
    ticket = _ticket_for(entry, tickets_by_key, default_ticket)
    if ticket is None:
        summary.skipped.append((entry.session_id, "no ticket key in session_key, task_id, cwd or command (--ticket)"))
        return
    # A left-behind entry (its Hermes was killed) is not a run to mirror: only a live identity is.
    if process_probe.probe_one(entry.pid, entry.create_time).state != liveness.ALIVE:
        summary.skipped.append((entry.session_id, f"pid {entry.pid} is not running (a stale entry)"))
        return
    registration = reports.Registration(
        ticket=ticket.key, handle=entry.handle, kind=Runtime.Kind.PROCESS, host=settings.CONTROLROOM_HOST,
        provider=Provider.HERMES, pid=entry.pid, pid_create_time=entry.create_time, cwd=entry.cwd,
        started_at=_started(entry), source=LivenessEvent.Source.IMPORT,
    )  # fmt: skip
    try:
        result = reports.register_runtime(registration, now)
    except reports.IntakeError as error:
        summary.skipped.append((entry.session_id, str(error)))
        return
    if result.created:
        summary.created += 1
    else:
        summary.known += 1
