"""Group commit of reports: real threads against GroupCommit, then real concurrent HTTP reports
against a live server and a real database, every one ledgered in order."""

import http.client
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from runtimes.intake import tokens
from runtimes.intake.batch import BatchTimeout, GroupCommit, Written
from runtimes.models import LivenessEvent, Runtime, RuntimeClass
from tests.conftest import make_runtime, make_ticket, wait_for


class Recorder:
    """A run_batch that records its batches; the first batch waits until `release` is set."""

    def __init__(self):
        self.batches = []
        self.release = threading.Event()
        self.first_started = threading.Event()

    def __call__(self, items):
        if not self.batches:
            self.batches.append(list(items))
            self.first_started.set()
            assert self.release.wait(10)
        else:
            self.batches.append(list(items))
        return [f"done {key}:{n}" for key, n in items]


def test_reports_arriving_together_are_written_in_one_batch_each_answered_with_its_own_result():
    recorder = Recorder()
    group = GroupCommit(recorder, key=lambda item: item[0])
    first = ThreadPoolExecutor(1).submit(group.submit, ("a", 0))
    assert recorder.first_started.wait(10)  # the leader is writing its batch of one
    items = [(key, n) for n in range(3) for key in "bcd"]  # three reports for each of three runtimes
    pool = ThreadPoolExecutor(len(items))
    futures = {item: pool.submit(group.submit, item) for item in items}
    assert wait_for(lambda: len(group._queue) == len(items))  # all queued behind the leader
    recorder.release.set()
    assert first.result(10) == "done a:0"
    assert {item: future.result(10) for item, future in futures.items()} == {
        item: f"done {item[0]}:{item[1]}" for item in items
    }
    assert recorder.batches[0] == [("a", 0)]
    later = recorder.batches[1:]
    assert all(len({key for key, _ in batch}) == len(batch) for batch in later)  # one per runtime
    assert max(len(batch) for batch in later) == 3  # the waiting reports went together
    for key in "bcd":  # each runtime's reports in the order they were queued
        order = [n for batch in later for k, n in batch if k == key]
        assert order == sorted(order) and sorted(order) == [0, 1, 2]
    assert not group._leading and not group._queue


def test_a_batchs_after_commit_steps_run_beside_the_next_batch_yet_in_batch_order():
    events, answered, release = [], threading.Event(), threading.Event()

    def run_batch(items):
        def notify():  # the notification step: runs while the batch's reports are already answered
            events.append(("after", [n for _, n in items]))
            answered.set()
            assert release.wait(10)

        return Written([f"done {n}" for _, n in items], after=[notify, lambda: 1 / 0])

    group = GroupCommit(run_batch, key=lambda item: item[0], steps_beside_next=True)  # as on PostgreSQL
    leader = ThreadPoolExecutor(1).submit(group.submit, ("a", 0))
    assert answered.wait(10)  # the leader is in its step: its batch was answered and the lead is free
    assert not group._leading and not leader.done()  # its own answer waits for its steps
    follower = ThreadPoolExecutor(1).submit(group.submit, ("b", 1))
    assert follower.result(10) == "done 1"  # the next batch is written and answered meanwhile…
    assert events == [("after", [0])]  # …but its step waits for the earlier batch's step
    release.set()
    assert leader.result(10) == "done 0"  # a failing step fails no report
    assert events == [("after", [0]), ("after", [1])]  # run after it, in order, by the thread stepping
    assert not group._stepping and not group._steps


def test_with_one_writer_at_a_time_the_after_commit_steps_run_before_the_next_batch():
    order, in_step, release = [], threading.Event(), threading.Event()

    def run_batch(items):
        order.append(("batch", [n for _, n in items]))

        def step():
            order.append(("after", [n for _, n in items]))
            in_step.set()
            assert release.wait(10)

        return Written([f"done {n}" for _, n in items], after=[step])

    group = GroupCommit(run_batch, key=lambda item: item[0], steps_beside_next=False)  # as on SQLite
    leader = ThreadPoolExecutor(1).submit(group.submit, ("a", 0))
    assert in_step.wait(10) and group._leading  # the step runs while the lead is still held
    follower = ThreadPoolExecutor(1).submit(group.submit, ("b", 1))
    assert wait_for(lambda: len(group._queue) == 1)  # the next report waits for the step to end
    assert order == [("batch", [0]), ("after", [0])]
    release.set()
    assert leader.result(10) == "done 0" and follower.result(10) == "done 1"
    assert order == [("batch", [0]), ("after", [0]), ("batch", [1]), ("after", [1])]


@pytest.mark.django_db(transaction=True)
def test_inside_a_callers_transaction_the_after_commit_steps_wait_for_its_commit():
    from django.db import transaction

    ran = []
    group = GroupCommit(lambda items: Written([n for _, n in items], after=[lambda: ran.append("after")]),
                        key=lambda item: item[0])  # fmt: skip
    with transaction.atomic():
        assert group.submit(("a", 7)) == 7
        assert ran == []
    assert ran == ["after"]


class Refused(Exception):
    pass


def test_one_report_the_database_refuses_fails_alone_and_its_batch_mates_are_written():
    entered, release, calls = threading.Event(), threading.Event(), []

    def run_batch(items):
        calls.append(list(items))
        if len(calls) == 1:  # the leader's batch of one holds the door while the others queue
            entered.set()
            assert release.wait(10)
        if "bad" in items:
            raise Refused("invalid byte sequence")
        return [f"ok {item}" for item in items]

    group = GroupCommit(run_batch, key=lambda item: item)
    leader = ThreadPoolExecutor(1).submit(group.submit, "first")
    assert entered.wait(10)
    pool = ThreadPoolExecutor(3)
    futures = {item: pool.submit(group.submit, item) for item in ("good-1", "bad", "good-2")}
    assert wait_for(lambda: len(group._queue) == 3)
    release.set()
    assert leader.result(10) == "ok first"
    assert futures["good-1"].result(10) == "ok good-1" and futures["good-2"].result(10) == "ok good-2"
    with pytest.raises(Refused):
        futures["bad"].result(10)
    assert sorted(calls[1]) == ["bad", "good-1", "good-2"]  # tried together, then one by one
    assert sorted(map(tuple, calls[2:])) == [("bad",), ("good-1",), ("good-2",)]


class Interrupt(BaseException):
    pass


def test_an_interrupted_batch_answers_every_report_in_it_and_hands_on_the_lead():
    entered, release = threading.Event(), threading.Event()
    calls = []

    def run_batch(items):
        calls.append(list(items))
        if len(calls) == 1:
            entered.set()
            assert release.wait(10)
            return ["ok" for _ in items]
        if len(calls) == 2:
            raise Interrupt()
        return ["ok" for _ in items]

    group = GroupCommit(run_batch, key=lambda item: item)
    leader = ThreadPoolExecutor(1).submit(group.submit, 0)
    assert entered.wait(10)
    pool = ThreadPoolExecutor(3)
    futures = [pool.submit(group.submit, n) for n in (1, 2, 3)]
    assert wait_for(lambda: len(group._queue) == 3)
    release.set()
    assert leader.result(10) == "ok"
    for future in futures:  # the new leader is interrupted; nobody of its batch waits forever
        with pytest.raises(Interrupt):
            future.result(10)
    assert group.submit(4) == "ok" and not group._leading


def test_a_failed_batch_fails_each_of_its_reports_and_the_next_report_is_written():
    calls = []

    def run_batch(items):
        calls.append(items)
        if len(calls) == 1:
            raise RuntimeError("database is locked")
        return ["ok" for _ in items]

    group = GroupCommit(run_batch, key=lambda item: item)
    with pytest.raises(RuntimeError, match="database is locked"):
        group.submit(1)
    assert group.submit(2) == "ok"
    assert not group._leading


def test_a_report_that_waits_too_long_leaves_the_queue_with_a_clear_error():
    release = threading.Event()

    def run_batch(items):
        assert release.wait(10)
        return ["ok" for _ in items]

    group = GroupCommit(run_batch, key=lambda item: item, wait=0.2)
    leader = ThreadPoolExecutor(1).submit(group.submit, 1)
    assert wait_for(lambda: group._leading)
    with pytest.raises(BatchTimeout, match="waited more than"):
        group.submit(1)  # the same runtime: it cannot join the batch being written
    release.set()
    assert leader.result(10) == "ok"
    assert not group._queue


@pytest.mark.django_db(transaction=True)
def test_concurrent_reports_over_http_are_each_ledgered_once_in_order(live_server):
    runtimes = [
        make_runtime(ticket=make_ticket(), runtime_class=RuntimeClass.TMUX_LIVE, class_reason="pane-alive")
        for _ in range(8)
    ]
    _, token = tokens.mint("batch-test")
    prompt = {"hook_event_name": "Notification", "notification_type": "permission_prompt", "message": "May I?"}
    work = {"hook_event_name": "PreToolUse", "tool_name": "Bash", "tool_input": {"command": "make"}}
    base = {"session_id": "0a1b2c3d-4e5f-4a6b-8c9d-0e1f2a3b4c5d", "cwd": "/work/repo"}
    host, port = live_server.url.removeprefix("http://").split(":")

    def report_ten_times(runtime):
        client = http.client.HTTPConnection(host, int(port), timeout=30)
        answers = []
        for n in range(10):
            body = json.dumps({**base, **(prompt if n % 2 == 0 else work)})
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            client.request("POST", f"/api/v1/runtimes/{runtime.pk}/claude-hook", body, headers)
            response = client.getresponse()
            answers.append((response.status, json.loads(response.read())["runtime_class"]))
        client.close()
        return answers

    with ThreadPoolExecutor(len(runtimes)) as pool:
        answers = list(pool.map(report_ten_times, runtimes))
    expected = [(200, "waiting-input" if n % 2 == 0 else "tmux-live") for n in range(10)]
    assert answers == [expected] * len(runtimes)
    for runtime in runtimes:
        chain = list(runtime.events.order_by("at", "pk").values_list("from_class", "to_class"))
        assert chain == [("tmux-live", "waiting-input"), ("waiting-input", "tmux-live")] * 5
        assert all(source == LivenessEvent.Source.HOOK for source in runtime.events.values_list("source", flat=True))


@pytest.mark.django_db
def test_plain_many_row_writes_store_every_value_nulls_datetimes_and_json_included():
    from django.utils import timezone

    from runtimes import ledger, plainsql

    ticket = make_ticket()
    rows = [make_runtime(ticket=ticket, exit_code=5) for _ in range(3)]
    at = timezone.now()
    for n, runtime in enumerate(rows):  # a column of nulls alone, a mixed column, a datetime, text
        runtime.exit_code, runtime.exit_signal = None, (9 if n == 1 else None)
        runtime.ended_at, runtime.class_message = at, f"ended 'quoted' #{n}"
    plainsql.write_rows(rows, ("exit_code", "exit_signal", "ended_at", "class_message"))
    stored = {r.pk: (r.exit_code, r.exit_signal, r.ended_at, r.class_message) for r in Runtime.objects.all()}
    assert stored == {r.pk: (None, 9 if n == 1 else None, at, f"ended 'quoted' #{n}") for n, r in enumerate(rows)}

    events = [
        LivenessEvent(runtime=r, at=at, from_class="", to_class=RuntimeClass.EXITED, reason="exit-status",
                      message="m", source="api", host="h", observed={"n": n, "tail": "a\nb"})
        for n, r in enumerate(rows)
    ]  # fmt: skip
    plainsql.insert_rows(LivenessEvent, events, ledger.EVENT_FIELDS)
    assert sorted(LivenessEvent.objects.values_list("runtime_id", "observed")) == [
        (r.pk, {"n": n, "tail": "a\nb"}) for n, r in enumerate(rows)
    ]
    many = [LivenessEvent(runtime=rows[0], at=at, to_class="exited", reason="exit-status", source="api",
                          observed={"n": n}) for n in range(1100)]  # fmt: skip
    plainsql.insert_rows(LivenessEvent, many, ledger.EVENT_FIELDS)  # several INSERTs: more than INSERT_ROWS rows
    assert sorted(n for (n,) in rows[0].events.filter(message="").values_list("observed__n")) == list(range(1100))
