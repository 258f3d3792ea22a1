import threading

import pytest
from django.db import connection, connections

from runtimes.models import LivenessEvent, Runtime
from runtimes.reconcile import reconcile
from tests.conftest import make_runtime, make_ticket
from tests.test_reconcile import process_runtime

pytestmark = pytest.mark.django_db(transaction=True)


def race(passes, workers=2):
    """Run `workers` reconcilers of the same host at once, `passes` times each."""
    barrier = threading.Barrier(workers)
    errors = []

    def run():
        try:
            barrier.wait()
            for _ in range(passes):
                reconcile(host="test-host")
        except Exception as error:  # surfaced by the assertion below
            errors.append(error)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors


def test_two_reconcilers_racing_record_each_transition_once(sleeper):
    ticket = make_ticket()
    processes = [sleeper() for _ in range(12)]
    runtimes = [process_runtime(p, ticket=ticket, runtime_class="pending") for p in processes]
    make_runtime(kind="websocket", handle="ws:r", ticket=ticket)

    race(passes=3)
    for process in processes[:6]:
        process.kill()
        process.wait()
    race(passes=3)

    for runtime in runtimes:
        runtime.refresh_from_db()
        transitions = list(runtime.events.order_by("at", "pk").values_list("from_class", "to_class"))
        expected = [("pending", "process-live")]
        if runtime.pid in {p.pid for p in processes[:6]}:
            expected.append(("process-live", "process-dead"))
        assert transitions == expected, (runtime.handle, transitions, connection.vendor)
    assert LivenessEvent.objects.count() == 12 + 6 + 1
    assert Runtime.objects.filter(runtime_class="process-dead").count() == 6
