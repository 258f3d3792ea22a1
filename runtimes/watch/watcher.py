"""The event-driven watcher of one host: learn of a worker's end within milliseconds, then record it
through the scheduled pass's own code (`reconcile(host, only=ids)`: probe → pure classifier →
ledger compare-and-set). It decides nothing by itself: an event only says "look at these now".

What it listens to, in one epoll loop:
- a pidfd (`os.pidfd_open`) per live runtime's process: the tmux pane's pid (from one
  `list-panes -a` per socket) or the tracked pid of a background process, trusted only when the
  process's start time matches the stored one (and, for a pane, started before tmux was asked);
- one tmux control-mode client per socket (`tmux_events`), for sessions and panes with no pidfd;
- a unix datagram socket (CONTROLROOM_WATCH_SOCKET) where `exec_worker` reports its child's exit
  and where a launch or registration on this host announces a new runtime (`announce`), which is
  loaded and watched at once;
- the safety net for runtimes nobody announced (registered from another host, a lost datagram):
  every CONTROLROOM_WATCH_SYNC seconds an indexed "rows of this host whose class changed since t"
  query, which picks up new runtimes and drops settled ones (plus a full resync every 5 minutes, in
  case a row was committed with an older class_changed_at).

Events arriving within CONTROLROOM_WATCH_SETTLE_MS of each other make one targeted pass. A runtime
an event named that is still live after the pass (tmux reports a death a moment after the pid ends)
is looked at again after 20 ms, 50 ms, … up to 2 s. Runtimes it cannot hold a pidfd for (fd limit
reached, tmux socket unreachable) are polled every CONTROLROOM_WATCH_POLL seconds instead.

Idle, it sleeps until its next deadline (a heartbeat, the safety-net query), so a quiet host costs
a wake-up every few seconds, whatever the number of runtimes watched.
"""

import contextlib
import json
import logging
import os
import resource
import select
import signal
import socket
import time
from dataclasses import dataclass
from datetime import timedelta

import psutil
from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection
from django.urls import NoReverseMatch, reverse
from django.utils import timezone

from runtimes.models import LIVE_CLASSES, LivenessEvent, Runtime, RuntimeClass, WatcherHeartbeat
from runtimes.probes import tmux as tmux_probe
from runtimes.probes.processes import CREATE_TIME_TOLERANCE
from runtimes.reconcile import reconcile
from runtimes.watch.announce import WATCHED_KINDS
from runtimes.watch.tmux_events import ControlClient

logger = logging.getLogger(__name__)

# The classes in which a runtime has a process worth holding: live ones, and unknown (it may be
# alive on a socket that could not be asked).
WATCHED_CLASSES = (*(c for c in LIVE_CLASSES if not c.startswith("websocket")), RuntimeClass.UNKNOWN)
# Seconds after an event at which a runtime that is still live is looked at again.
RECHECK_DELAYS = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
SYNC_OVERLAP = timedelta(seconds=10)  # a row committed a little after its class_changed_at is still seen
RESYNC_EVERY = 300.0  # seconds between full loads of this host's live rows
FD_RESERVE = 128  # descriptors kept free for the database, tmux calls and clients
MAX_DATAGRAM = 4096  # a report is a short JSON object; longer ones are cut and ignored
MAX_DATAGRAMS = 1000  # read per wake-up, so a flood cannot hold the loop (the rest wait for the next)
MAX_ANNOUNCED = 1000  # runtimes announced and not yet loaded; past that, a full resync instead
ROW_FIELDS = ("pk", "kind", "tmux_socket", "tmux_target", "pid", "pid_create_time", "output_path",
              "runtime_class", "class_changed_at")  # fmt: skip


@dataclass
class Watched:
    pk: int
    kind: str
    socket: str
    target: str
    pid: int | None
    create_time: float | None
    output_path: str
    changed_at: object
    fd: int | None = None  # the pidfd held for it, if any
    polled: bool = False  # no pidfd could be held: looked at every WATCH_POLL seconds


def raise_fd_limit():
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def open_pidfd(pid, expected_create_time, born_before=None):
    """A pidfd for `pid` if it is the process we mean, else None. The pidfd is opened first and the
    identity checked after: a pid reused in between fails the check, never the other way round."""
    try:
        fd = os.pidfd_open(pid)
    except (ProcessLookupError, OSError, ValueError, OverflowError):
        return None
    try:
        create_time = psutil.Process(pid).create_time()
    except (psutil.Error, ValueError, OverflowError):
        create_time = None
    trusted = create_time is not None
    if trusted and expected_create_time is not None:
        trusted = abs(create_time - expected_create_time) <= CREATE_TIME_TOLERANCE
    if trusted and born_before is not None:
        trusted = create_time <= born_before + CREATE_TIME_TOLERANCE
    if not trusted:
        os.close(fd)
        return None
    return fd


class Watcher:
    def __init__(self, host, write=print):
        self.host = host
        self.write = write
        config = settings.CONTROLROOM
        self.settle = config["WATCH_SETTLE_MS"] / 1000
        self.poll_every = config["WATCH_POLL"]
        self.beat_every = config["WATCH_HEARTBEAT"]
        self.sync_every = config["WATCH_SYNC"]
        self.socket_path = config["WATCH_SOCKET"]
        self.tmux_bin = config["TMUX_BIN"]
        self.watched = {}  # pk → Watched
        self.pidfds = {}  # pidfd → pk
        self.clients = {}  # tmux socket → ControlClient
        self.client_fds = {}  # client fd → tmux socket
        self.dirty = set()  # pks to look at in the next pass
        self.announced = set()  # pks announced on the socket, to load before the next pass
        self.fired = set()  # of those, the ones an event named (rechecked while still live)
        self.rechecks = {}  # pk → (due, attempt)
        self.poller = select.epoll()  # a wake-up costs the same with 10 or 10,000 fds held
        self.stopping = False
        self.passes = self.transitions = 0
        self.last_pass_at, self.last_pass_ms = None, 0
        self.fd_limit = raise_fd_limit()
        self.exit_socket = None
        self.wakeup = None
        self.beat_written = False
        self.marks = {}  # id → class_changed_at (as stored) of the rows changed lately, as last seen
        table = connection.ops.quote_name(Runtime._meta.db_table)
        # Served by the runtime_host_changed_idx index.
        self.changed_sql = f"SELECT id, class_changed_at FROM {table} WHERE host = %s AND class_changed_at >= %s"  # noqa: S608

    # ----- life cycle -------------------------------------------------------------------------
    def run(self):
        """Watch until SIGTERM/SIGINT; return after a clean stop."""
        self._start()
        try:
            while not self.stopping:
                self._wait_and_collect(self._timeout())
                if self.announced and not self.stopping:
                    self._take_announced()
                if self.dirty and not self.stopping:
                    self._gather_burst()
                self._due()
                if self.dirty and not self.stopping:
                    self._pass()
        finally:
            self._close()

    def _start(self):
        receive, send = socket.socketpair()
        receive.setblocking(False)
        send.setblocking(False)
        self.wakeup = (receive, send)
        signal.set_wakeup_fd(send.fileno(), warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self.poller.register(receive.fileno(), select.EPOLLIN)
        self._bind_exit_socket()
        # Load the URLconf now (notifications link to admin pages): the first pass after a death
        # would otherwise pay for importing every view.
        with contextlib.suppress(NoReverseMatch):
            reverse("admin:index")
        now = time.monotonic()
        self.next_sync, self.next_resync = now + self.sync_every, now + RESYNC_EVERY
        self.next_poll = now
        self.synced_at = None
        self._sync(full=True)
        self._beat()
        # The start-up pass: everything watched is looked at once, so a death while no watcher
        # ran is recorded now, not at the next scheduled pass.
        caught_up = self._pass(quiet=True) if self.dirty else 0
        self.write(
            f"Watching {self.host}: {len(self.watched)} runtimes, {len(self.pidfds)} pidfds, "
            f"{len(self.clients)} tmux clients, fd limit {self.fd_limit}; the start-up pass recorded "
            f"{caught_up} transitions."
        )

    def _on_signal(self, number, frame):
        self.stopping = True

    def _close(self):
        for fd in list(self.pidfds):
            os.close(fd)
        self.pidfds.clear()
        for client in self.clients.values():
            client.close()
        self.clients.clear()
        if self.exit_socket is not None:
            self.exit_socket.close()
            with contextlib.suppress(OSError):
                os.unlink(self.socket_path)
        signal.set_wakeup_fd(-1)
        for end in self.wakeup or ():
            end.close()
        self.poller.close()
        with contextlib.suppress(DatabaseError):
            WatcherHeartbeat.objects.filter(host=self.host).update(stopped_at=timezone.now(), beat_at=timezone.now())
        self.write("Stopped.")

    def _bind_exit_socket(self):
        if not self.socket_path:
            return
        os.makedirs(os.path.dirname(self.socket_path) or ".", exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)  # a previous watcher's, left by a crash
        server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        server.bind(self.socket_path)
        os.chmod(self.socket_path, 0o600)
        server.setblocking(False)
        self.exit_socket = server
        self.poller.register(server.fileno(), select.EPOLLIN)

    # ----- waiting ----------------------------------------------------------------------------
    def _timeout(self):
        now = time.monotonic()
        due = [self.next_sync, self.next_beat]
        if any(w.polled for w in self.watched.values()):
            due.append(self.next_poll)
        if self.rechecks:
            due.append(min(when for when, _ in self.rechecks.values()))
        return max(0, min(due) - now)

    def _wait_and_collect(self, timeout):
        try:
            events = self.poller.poll(timeout)
        except InterruptedError:  # pragma: no cover - PEP 475 retries; kept for safety
            return
        for fd, _mask in events:
            self._on_ready(fd)

    def _gather_burst(self):
        """Keep collecting for the settle window, so a burst makes one pass."""
        deadline = time.monotonic() + self.settle
        while not self.stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._wait_and_collect(left)

    def _on_ready(self, fd):
        if fd in self.pidfds:
            pk = self.pidfds.pop(fd)
            self.poller.unregister(fd)
            os.close(fd)
            watched = self.watched.get(pk)
            if watched:
                watched.fd = None
                self._fire(pk)
        elif fd in self.client_fds:
            socket_name = self.client_fds[fd]
            changed, ended = self.clients[socket_name].read()
            if ended:
                self._drop_client(socket_name)
            if changed:
                for watched in self.watched.values():
                    if watched.kind == Runtime.Kind.TMUX and watched.socket == socket_name:
                        self._fire(watched.pk)
        elif self.exit_socket is not None and fd == self.exit_socket.fileno():
            self._read_reports()
        elif self.wakeup and fd == self.wakeup[0].fileno():
            try:
                while self.wakeup[0].recv(64):
                    pass
            except BlockingIOError:
                pass

    def _fire(self, pk):
        self.dirty.add(pk)
        self.fired.add(pk)
        self.rechecks.pop(pk, None)

    def _read_reports(self):
        """Read what is waiting on the socket: exit reports (`{"output": LOG, ...}`) fire the
        runtime logging there; announcements (`{"runtime": ID}`) queue a runtime to load. Anything
        else is ignored, and at most MAX_DATAGRAMS are read per wake-up."""
        by_output, ignored = None, 0
        for _ in range(MAX_DATAGRAMS):
            try:
                data = self.exit_socket.recv(MAX_DATAGRAM)
            except OSError:  # BlockingIOError: nothing more waiting
                break
            try:
                report = json.loads(data)
            except (ValueError, RecursionError):  # RecursionError: "[[[[…" nested past the stack
                report = None
            if not isinstance(report, dict):
                ignored += 1
                continue
            pk, output = report.get("runtime"), report.get("output")
            if type(pk) is int and 0 < pk < 2**63:
                if len(self.announced) < MAX_ANNOUNCED:
                    self.announced.add(pk)
                else:  # more than one load should take: let a full resync find them all
                    self.next_sync = self.next_resync = time.monotonic()
            elif isinstance(output, str):
                if by_output is None:
                    by_output = {w.output_path: w.pk for w in self.watched.values() if w.output_path}
                if output in by_output:
                    self._fire(by_output[output])
            else:
                ignored += 1
        if ignored:
            logger.warning("watcher: ignored %d malformed datagram(s)", ignored)

    # ----- timers -----------------------------------------------------------------------------
    def _due(self):
        now = time.monotonic()
        for pk, (when, _attempt) in list(self.rechecks.items()):
            if when <= now:
                self.dirty.add(pk)
        if now >= self.next_sync:
            full = now >= self.next_resync
            self._sync(full=full)
            self.next_sync = now + self.sync_every
            if full:
                self.next_resync = now + RESYNC_EVERY
        if now >= self.next_poll:
            self.dirty.update(w.pk for w in self.watched.values() if w.polled)
            self.next_poll = now + self.poll_every
        if now >= self.next_beat:
            self._beat()

    def _beat(self):
        self.next_beat = time.monotonic() + self.beat_every
        now = timezone.now()
        defaults = {
            "pid": os.getpid(),
            "beat_at": now,
            "stopped_at": None,
            "watched": len(self.watched),
            "pidfds": len(self.pidfds),
            "polled": sum(1 for w in self.watched.values() if w.polled),
            "tmux_clients": len(self.clients),
            "passes": self.passes,
            "transitions": self.transitions,
            "last_pass_at": self.last_pass_at,
            "last_pass_ms": self.last_pass_ms,
        }
        try:
            if self.beat_written:
                WatcherHeartbeat.objects.filter(host=self.host).update(**defaults)
            else:  # the first beat of this run: (re)start the row
                WatcherHeartbeat.objects.update_or_create(host=self.host, defaults={**defaults, "started_at": now})
                self.beat_written = True
        except DatabaseError as error:
            logger.warning("watcher: heartbeat not written: %s", error)
            close_old_connections()

    # ----- which runtimes ---------------------------------------------------------------------
    def _sync(self, full=False):
        """Pick up new and changed rows of this host, drop settled ones. Every WATCH_SYNC seconds
        this is one raw indexed query for the (id, class_changed_at) of rows changed lately, so it
        costs next to nothing when nothing changed; only rows not seen in that state before are
        loaded."""
        started = timezone.now()
        try:
            since = connection.ops.adapt_datetimefield_value((self.synced_at or started) - SYNC_OVERLAP)
            with connection.cursor() as cursor:
                cursor.execute(self.changed_sql, [self.host, since])
                marks = dict(cursor.fetchall())
            fresh = [pk for pk, mark in marks.items() if self.marks.get(pk) != mark]
            if full:  # everything is loaded: the next query reloads only what changes after it
                rows = Runtime.objects.on_host(self.host).filter(
                    kind__in=WATCHED_KINDS, runtime_class__in=WATCHED_CLASSES
                )
                self._take_rows(list(rows.values_list(*ROW_FIELDS)), full=True)
            elif fresh:
                self._take_rows(self._load(fresh))
            self.marks = marks
        except DatabaseError as error:
            logger.warning("watcher: cannot load runtimes: %s", error)
            close_old_connections()
            return
        self.synced_at = started

    def _take_announced(self):
        """Load the runtimes announced on the socket (one query) and watch those of this host in a
        watched class; one already watched in the same state is left as it is."""
        pks, self.announced = sorted(self.announced), set()
        try:
            found = self._load(pks)
        except DatabaseError as error:
            logger.warning("watcher: cannot load announced runtimes (the next sync will): %s", error)
            close_old_connections()
            return
        self._take_rows(found)

    def _load(self, pks):
        """The watched fields of these runtimes, those of this host and of a watched kind (one query)."""
        rows = Runtime.objects.filter(pk__in=pks, host=self.host, kind__in=WATCHED_KINDS)
        return list(rows.values_list(*ROW_FIELDS))

    def _take_rows(self, found, full=False):
        seen, new = set(), []
        for pk, kind, socket_name, target, pid, create_time, output, runtime_class, changed_at in found:
            seen.add(pk)
            current = self.watched.get(pk)
            if runtime_class not in WATCHED_CLASSES:
                if current:
                    self._forget(pk)
                continue
            if current and current.changed_at == changed_at:
                continue
            if current:
                self._forget(pk)
            self.watched[pk] = Watched(pk, kind, socket_name, target, pid, create_time, output, changed_at)
            new.append(pk)
        if full:
            for pk in [pk for pk in self.watched if pk not in seen]:
                self._forget(pk)
        if new:
            self._arm(new)
            self.dirty.update(new)

    def _forget(self, pk):
        watched = self.watched.pop(pk, None)
        self.rechecks.pop(pk, None)
        self.fired.discard(pk)
        if watched and watched.fd is not None:
            self.pidfds.pop(watched.fd, None)
            self.poller.unregister(watched.fd)
            os.close(watched.fd)
            watched.fd = None
        tmux_runtimes = (w for w in self.watched.values() if w.kind == Runtime.Kind.TMUX)
        if watched and watched.kind == Runtime.Kind.TMUX and all(w.socket != watched.socket for w in tmux_runtimes):
            self._drop_client(watched.socket)

    # ----- holding pidfds and tmux clients ----------------------------------------------------
    def _room_for_fd(self):
        return len(self.pidfds) + len(self.clients) * 3 + FD_RESERVE < self.fd_limit

    def _hold(self, watched, pid, expected_create_time, born_before=None):
        if not self._room_for_fd():
            watched.polled = True
            return False
        fd = open_pidfd(pid, expected_create_time, born_before)
        if fd is None:
            return False
        watched.fd, watched.polled = fd, False
        self.pidfds[fd] = watched.pk
        self.poller.register(fd, select.EPOLLIN)
        return True

    def _arm(self, pks):
        """Hold a pidfd for each of these runtimes that has a live process we can trust; those
        without one are looked at by the next pass (which records a dead one) and, for tmux, heard
        through their socket's control client."""
        sockets = {}
        for pk in pks:
            watched = self.watched.get(pk)
            if watched is None or watched.fd is not None:
                continue
            if watched.kind == Runtime.Kind.PROCESS:
                if watched.pid:
                    self._hold(watched, watched.pid, watched.create_time)
                continue
            sockets.setdefault(watched.socket, []).append(watched)
        for socket_name, group in sockets.items():
            asked_at = time.time()
            snapshot = tmux_probe.list_panes(socket_name)
            for watched in group:
                watched.polled = bool(snapshot.error)
                pane = None if snapshot.error else snapshot.find(watched.target)
                if pane is None or pane.dead or not pane.pid:
                    continue
                expected = watched.create_time if watched.pid == pane.pid else None
                self._hold(watched, pane.pid, expected, born_before=asked_at)
            if not snapshot.error and snapshot.pane_count:
                self._ensure_client(socket_name, snapshot)

    def _ensure_client(self, socket_name, snapshot):
        client = self.clients.get(socket_name)
        if client is not None or not self._room_for_fd():
            return
        session = next(iter(sorted({pane.session for pane in snapshot.by_target.values()})))
        try:
            client = ControlClient(socket_name, session, self.tmux_bin)
        except OSError as error:
            logger.warning("watcher: no tmux client for %s: %s", socket_name or "default", error)
            return
        self.clients[socket_name] = client
        self.client_fds[client.fd] = socket_name
        self.poller.register(client.fd, select.EPOLLIN)

    def _drop_client(self, socket_name):
        client = self.clients.pop(socket_name, None)
        if client is None:
            return
        self.client_fds.pop(client.fd, None)
        self.poller.unregister(client.fd)
        client.close()

    # ----- one targeted pass ------------------------------------------------------------------
    def _pass(self, quiet=False):
        """One targeted pass over the runtimes marked dirty; return the transitions it wrote."""
        ids, self.dirty = self.dirty, set()
        fired, self.fired = self.fired & ids, self.fired - ids
        started = time.monotonic()
        try:
            summary = reconcile(self.host, only=ids, source=LivenessEvent.Source.WATCHER)
        except DatabaseError as error:
            logger.warning("watcher: targeted pass failed, retrying: %s", error)
            close_old_connections()
            for pk in ids:
                self._recheck(pk)
            return 0
        self.passes += 1
        self.transitions += summary.transitions
        self.last_pass_at, self.last_pass_ms = timezone.now(), int((time.monotonic() - started) * 1000)
        if summary.transitions and not quiet:
            self.write(f"{summary} ({len(ids)} looked at)")
        rearm = []
        for pk in ids:
            runtime_class = summary.classes.get(pk)
            watched = self.watched.get(pk)
            if watched is None:
                continue
            if runtime_class not in WATCHED_CLASSES:
                self._forget(pk)
                continue
            if watched.fd is None:
                rearm.append(pk)
            if pk in fired or pk in self.rechecks:
                self._recheck(pk)
        if rearm:
            self._arm(rearm)
        return summary.transitions

    def _recheck(self, pk):
        """Look again a little later: tmux records a death a moment after the pid ends."""
        _, attempt = self.rechecks.get(pk, (0, -1))
        attempt += 1
        if attempt >= len(RECHECK_DELAYS):
            self.rechecks.pop(pk, None)  # still live after every look: it really is (or the schedule will say)
            return
        self.rechecks[pk] = (time.monotonic() + RECHECK_DELAYS[attempt], attempt)
