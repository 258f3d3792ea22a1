"""Group commit for reports: many request threads, one transaction at a time.

A report's cost is mostly its transaction (lock, read, write the row, append the ledger row,
commit), not its parsing. When reports arrive together, the first thread to arrive becomes the
leader: it takes every waiting report (at most one per runtime, so each runtime's reports stay in
order) and writes them in one transaction through `run_batch`, on its own database connection,
while the others wait. Once its own report is written it hands the lead to a waiting thread, so no
request waits behind more than a batch or two. A thread that arrives alone is its own batch of one:
the single-threaded path (a test, a command) is the same code.

Nothing is written by a thread other than a request's, and nothing outlives the requests: a
report is answered only after its batch committed (or with the error that batch failed with).
What a batch leaves for after its commit (the notification step) the leader does once the batch's
reports are answered and — where the database takes writers together (PostgreSQL) — the lead is
handed on, so it delays neither them nor the next batch. Those steps still run one at a time and
in the order of their batches (a later batch's step never reads a runtime before an earlier one
does): each leader queues its steps as it hands on the lead, and one thread at a time runs the
queue. SQLite takes one writer at a time: there a step would only queue for the lock beside the
next batch (and sleep in its busy wait), so it runs before the lead is handed on.
"""

import logging
import threading
from dataclasses import dataclass, field

from django.db import connection, transaction

logger = logging.getLogger(__name__)


class BatchTimeout(Exception):
    """A report waited longer than the limit for its batch."""


@dataclass(eq=False)
class _Waiting:
    item: object
    key: object
    wake: threading.Event = field(default_factory=threading.Event)  # written, or handed the lead
    written: bool = False
    result: object = None
    error: BaseException | None = None

    def outcome(self):
        if self.error is not None:
            raise self.error
        return self.result


@dataclass
class Written:
    """What `run_batch` may answer instead of a plain list: one result per item, and the steps to
    run once those are answered (each a callable; its transaction has committed)."""

    results: list
    after: list = field(default_factory=list)


def _run_after(steps):
    for step in steps:
        try:
            step()
        except Exception:  # as Django's robust on_commit: the batch is written, whatever a step does
            logger.exception("a step after a report batch failed")


class GroupCommit:
    """`submit(item)` returns `run_batch([...])`'s result for `item`, or raises its error.

    `run_batch(items)` gets items of distinct `key(item)` and returns one result per item, in
    order (a list, or a Written with the steps for after its commit); a result that is an
    exception is raised in that item's thread. If `run_batch` raises, every item of the batch
    gets that error."""

    def __init__(self, run_batch, key, limit=200, wait=30.0, steps_beside_next=None):
        self.run_batch = run_batch
        self.key = key
        self.limit = limit
        self.wait = wait
        # Whether the after-commit steps run beside the next batch (True) or before it (False);
        # None: beside it where the database takes writers together.
        self.steps_beside_next = steps_beside_next
        self._lock = threading.Lock()
        self._queue = []
        self._leading = False
        self._steps = []  # after-commit steps waiting, in batch order
        self._stepping = False  # a thread is running them

    def submit(self, item):
        if connection.in_atomic_block:
            # Inside the caller's transaction: others' reports must not ride on a commit that may
            # never come (nor wait on locks this transaction holds). Written alone, here.
            result, after = self._run_one(item)
            if isinstance(result, BaseException):
                raise result
            for step in after:
                transaction.on_commit(step, robust=True)
            return result
        me = _Waiting(item, self.key(item))
        with self._lock:
            self._queue.append(me)
            follower = self._leading
            self._leading = True
        if follower and not me.wake.wait(self.wait):
            with self._lock:
                if me in self._queue and not me.wake.is_set():  # never taken: leave, and say so
                    self._queue.remove(me)
                    raise BatchTimeout(f"the report waited more than {self.wait:.0f} s for its batch")
            me.wake.wait()  # taken meanwhile: its batch is being written
        if not me.written:  # the lead is ours: write batches until our own report is written
            self._lead_until_written(me)
        return me.outcome()

    def _beside_next(self):
        if self.steps_beside_next is not None:
            return self.steps_beside_next
        return connection.features.has_select_for_update  # False on SQLite: one writer at a time

    def _take(self):
        """The next batch: waiting reports in arrival order, one per key, at most `limit`."""
        batch, keys = [], set()
        for waiting in self._queue:
            if waiting.key not in keys and len(batch) < self.limit:
                batch.append(waiting)
                keys.add(waiting.key)
        self._queue = [waiting for waiting in self._queue if waiting not in batch]
        return batch

    def _lead_until_written(self, me):
        after, stepper = [], False
        try:
            while not me.written:
                with self._lock:
                    batch = self._take()
                after += self._write(batch)
            if not self._beside_next():  # one writer at a time: before the next batch, while we lead
                _run_after(after)
                after = []
        finally:  # also when a batch failed: the steps of the batches written before it still run
            with self._lock:
                self._steps += after  # leads end one at a time, so the steps queue in batch order
                stepper = bool(self._steps) and not self._stepping
                self._stepping = self._stepping or stepper
                successor = next((waiting for waiting in self._queue if not waiting.wake.is_set()), None)
                if successor is None:
                    self._leading = False
                else:
                    successor.wake.set()  # still queued and not written: it leads from here
            if stepper:
                self._run_steps()

    def _run_steps(self):
        """Run the queued after-commit steps, in order, until none is left."""
        try:
            while True:
                with self._lock:
                    steps, self._steps = self._steps, []
                    if not steps:
                        self._stepping = False
                        return
                _run_after(steps)
        except BaseException:  # an interrupt: the next leader runs what is left
            with self._lock:
                self._stepping = False
            raise

    def _write(self, batch):
        """Write one batch and answer its reports; return its steps for after the commit."""
        try:
            results, after = self._run(batch)
        except BaseException as error:  # an interrupt: no report of the batch may wait forever
            self._settle(batch, [error] * len(batch))
            raise
        self._settle(batch, results)
        return after

    def _run(self, batch):
        """run_batch's results and after-steps; when a batch of several fails, each report is tried
        alone, so one report the database refuses fails only its own request."""
        items = [waiting.item for waiting in batch]
        try:
            results, after = self._answer(self.run_batch(items))
        except Exception as error:
            if len(items) == 1:
                return [error], []
            alone = [self._run_one(item) for item in items]
            return [result for result, _ in alone], [step for _, steps in alone for step in steps]
        if len(results) != len(items):
            raise RuntimeError(f"run_batch answered {len(results)} results for {len(items)} items")
        return results, after

    def _run_one(self, item):
        try:
            results, after = self._answer(self.run_batch([item]))
            return results[0], after
        except Exception as error:
            return error, []

    @staticmethod
    def _answer(answer):
        if isinstance(answer, Written):
            return answer.results, answer.after
        return answer, []

    @staticmethod
    def _settle(batch, results):
        for waiting, result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                waiting.error = result
            else:
                waiting.result = result
            waiting.written = True
            waiting.wake.set()
