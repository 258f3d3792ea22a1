"""A stop is the controller's, in every interleaving, on the right host, and only of what Control
Room started: issue #10 items 1-3."""

import threading
import uuid

import psutil
import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connections
from django.urls import reverse
from django_q.brokers import get_broker
from django_q.signing import SignedPackage

from runtimes import tasks
from runtimes.models import LivenessEvent, Runtime
from runtimes.probes.processes import create_time_of
from runtimes.reconcile import reconcile
from runtimes.runs import controller
from tests.conftest import make_runtime, make_ticket, start_session, wait_for
from tickets.models import Ticket


def sessions(tmux):
    done = tmux.cmd("list-sessions", "-F", "#{session_name}")
    return done.stdout if done.returncode == 0 else []


class ReconcileLoops:
    """`count` reconcile loops of this host, each pausing `interval` seconds between passes (what
    `reconcile_runtimes --watch --interval 0.02` does), in threads with their own connections."""

    def __init__(self, count=2, interval=0.02):
        self.interval, self.stop, self.errors = interval, threading.Event(), []
        self.passes = [0] * count
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(count)]

    def _run(self, index):
        try:
            while not self.stop.is_set():
                try:
                    reconcile(host="test-host")
                except DatabaseError as error:  # the --watch loop reports it and carries on
                    self.errors.append(error)
                self.passes[index] += 1
                self.stop.wait(self.interval)
        finally:
            connections.close_all()

    def wait_passes(self, more):
        target = [n + more for n in self.passes]
        return wait_for(lambda: all(n >= t for n, t in zip(self.passes, target, strict=True)), timeout=60)

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)


def ledger_chain_breaks(runtime, first_class):
    """Events whose from_class is not the previous event's to_class (in write order)."""
    breaks, previous = [], first_class
    for event in runtime.events.order_by("pk"):
        if event.from_class != previous:
            breaks.append((previous, event.from_class, event.to_class))
        previous = event.to_class
    return breaks


@pytest.mark.django_db(transaction=True)
def test_thirty_stops_racing_two_reconcile_loops_are_thirty_controller_kills(tmux, tmux_socket, sleeper):
    runtimes = []
    for i in range(15):
        session = f"cr-mc-{i + 1}-race"
        pid = start_session(tmux, session, "sleep", "600", mark=f"race-{i}")
        runtimes.append(make_runtime(ticket=make_ticket(), tmux_socket=tmux_socket, tmux_target=session, pid=pid,
                                     pid_create_time=create_time_of(pid), launch_token=f"race-{i}"))  # fmt: skip
    for _ in range(15):
        process = sleeper(600)
        runtimes.append(make_runtime(ticket=make_ticket(), kind="process", pid=process.pid,
                                     pid_create_time=create_time_of(process.pid)))  # fmt: skip
    ids = [r.pk for r in runtimes]
    live = ("tmux-live", "process-live")

    with ReconcileLoops(count=2, interval=0.02) as loops:
        assert wait_for(lambda: Runtime.objects.filter(pk__in=ids, runtime_class__in=live).count() == 30, timeout=60)
        for pk in ids:
            assert controller.stop_runtime(Runtime.objects.get(pk=pk), by="race-test").state == "killed"
        assert loops.wait_passes(3)  # both loops look at the stopped workers again
    assert not loops.errors, loops.errors

    stopped = Runtime.objects.filter(pk__in=ids)
    assert set(stopped.values_list("runtime_class", "controller_action")) == {("killed-by-controller", "kill")}
    assert not stopped.filter(exit_outcome="failed").exists()
    assert not Ticket.objects.exclude(failure_reason="").exists()  # no banner anywhere
    assert not LivenessEvent.objects.filter(to_class__in=("exited", "tmux-missing", "process-dead")).exists()
    assert {r.pk: ledger_chain_breaks(r, "pending") for r in stopped if ledger_chain_breaks(r, "pending")} == {}
    assert sessions(tmux) == []


@pytest.mark.django_db
def test_a_stop_for_another_hosts_worker_is_queued_for_that_host_and_recorded_only_when_it_stops_it(
    tmux, tmux_socket, settings, capsys
):
    host_b = f"host-b-{uuid.uuid4().hex[:8]}"
    pid = start_session(tmux, "cr-mc-20-bb", "sleep", "600", mark="mark-b")
    runtime = make_runtime(host=host_b, tmux_socket=tmux_socket, tmux_target="cr-mc-20-bb", pid=pid,
                           pid_create_time=create_time_of(pid), launch_token="mark-b",
                           runtime_class="tmux-live")  # fmt: skip

    call_command("stop_worker", runtime.handle, "--by", "maria")  # on this host, test-host
    assert "stop requested" in capsys.readouterr().out
    runtime.refresh_from_db()
    assert (runtime.runtime_class, runtime.controller_action) == ("tmux-live", "stop-requested")
    assert not runtime.events.exists()  # nothing recorded as killed
    assert sessions(tmux) == ["cr-mc-20-bb"] and psutil.pid_exists(pid)
    broker = get_broker(host_b)  # the queue host B's cluster (cluster_name = its host) reads
    (_, payload), *others = broker.dequeue()
    assert others == []
    task = SignedPackage.loads(payload)
    assert (task["func"], task["args"], task["cluster"]) == (
        "runtimes.tasks.stop_runtime",
        (runtime.pk, "maria"),
        host_b,
    )
    with pytest.raises(controller.ControllerError, match="not stopped"):
        tasks.stop_runtime(*task["args"])  # run by the wrong host's cluster: refused
    assert sessions(tmux) == ["cr-mc-20-bb"]

    settings.CONTROLROOM_HOST = host_b  # now host B's cluster runs it
    assert "stopped by maria" in tasks.stop_runtime(*task["args"])
    runtime.refresh_from_db()
    assert (runtime.runtime_class, runtime.controller_action) == ("killed-by-controller", "kill")
    assert list(runtime.events.values_list("host", "to_class")) == [(host_b, "killed-by-controller")]
    assert sessions(tmux) == []


@pytest.mark.django_db
def test_a_stop_request_that_cannot_be_queued_is_withdrawn_and_said(tmux_socket, settings, monkeypatch):
    runtime = make_runtime(host="host-elsewhere", tmux_socket=tmux_socket, runtime_class="tmux-live")

    def broker_down(*args, **kwargs):
        raise ConnectionError("Redis is not answering")

    monkeypatch.setattr(controller, "async_task", broker_down)
    with pytest.raises(CommandError, match="Could not queue the stop .* Redis is not answering"):
        call_command("stop_worker", runtime.handle)
    runtime.refresh_from_db()
    assert (runtime.runtime_class, runtime.controller_action) == ("tmux-live", "none")


@pytest.mark.django_db
def test_no_server_counts_as_stopped_only_when_the_identity_check_says_the_worker_is_gone(tmux_socket, sleeper):
    unverifiable = sleeper(600)  # its start time was never recorded: it cannot be shown to be the worker
    runtime = make_runtime(tmux_socket=tmux_socket, tmux_target="cr-mc-21-aa", pid=unverifiable.pid,
                           launch_token="t21", runtime_class="tmux-live")  # fmt: skip
    with pytest.raises(CommandError, match="cannot tell that the worker stopped"):
        call_command("stop_worker", runtime.handle)
    runtime.refresh_from_db()
    assert (runtime.runtime_class, runtime.controller_action) == ("tmux-live", "none")
    assert unverifiable.poll() is None and not runtime.events.exists()

    worker = sleeper(600)  # its identity is known: stopping it is what makes it gone
    runtime = make_runtime(tmux_socket=tmux_socket, tmux_target="cr-mc-22-aa", pid=worker.pid,
                           pid_create_time=create_time_of(worker.pid), runtime_class="tmux-live")  # fmt: skip
    call_command("stop_worker", runtime.handle)
    assert worker.wait(timeout=10) is not None
    runtime.refresh_from_db()
    assert runtime.runtime_class == "killed-by-controller"
    assert "already gone" in runtime.class_message


@pytest.mark.django_db
def test_a_forged_row_never_kills_an_unrelated_process_or_a_foreign_session(tmux, tmux_socket, sleeper):
    stranger = sleeper(600)
    start_session(tmux, "important-user-session", "sleep", "600")
    start_session(tmux, "cr-mc-23-zz", "sleep", "600", mark="someone-elses-launch")
    forged = [
        make_runtime(kind="process", pid=stranger.pid, runtime_class="process-live"),  # start time unknown
        make_runtime(tmux_socket=tmux_socket, tmux_target="important-user-session", runtime_class="tmux-live"),
        make_runtime(
            tmux_socket=tmux_socket,
            tmux_target="important-user-session:0.0",
            launch_token="guess",
            runtime_class="tmux-live",
        ),  # fmt: skip
        make_runtime(
            tmux_socket=tmux_socket, tmux_target="cr-mc-23-zz", launch_token="mine", runtime_class="tmux-live"
        ),  # fmt: skip
    ]
    for runtime in forged:
        with pytest.raises(CommandError, match="not signalled|not killed"):
            call_command("stop_worker", runtime.handle)
    assert stranger.poll() is None
    assert sorted(sessions(tmux)) == ["cr-mc-23-zz", "important-user-session"]
    assert set(Runtime.objects.values_list("runtime_class", "controller_action")) == {
        ("process-live", "none"),
        ("tmux-live", "none"),
    }
    assert not LivenessEvent.objects.exists()


@pytest.mark.django_db
def test_reap_leaves_an_unmarked_control_room_looking_session_alone_and_says_so(tmux, tmux_socket, capsys):
    make_ticket(key="MC-24")
    start_session(tmux, "cr-mc-24-aa", "sleep", "600")  # looks like ours, was not started by us
    start_session(tmux, "cr-mc-24-bb", "sleep", "600", mark="lost-launch")  # ours, its runtime lost
    call_command("reap_workers", "--tmux-socket", tmux_socket)
    out = capsys.readouterr().out
    assert "left alone: session cr-mc-24-aa" in out
    assert sessions(tmux) == ["cr-mc-24-aa"]
    adopted = Runtime.objects.get(tmux_target="cr-mc-24-bb")
    assert (adopted.launch_token, adopted.runtime_class) == ("lost-launch", "killed-by-controller")


def staff(permissions, superuser=False):
    user = User.objects.create_user(f"user-{uuid.uuid4().hex[:6]}", password="pw", is_staff=True,
                                    is_superuser=superuser)  # fmt: skip
    user.user_permissions.set(Permission.objects.filter(codename__in=permissions))
    return user


@pytest.mark.django_db
@pytest.mark.parametrize("superuser", [False, True])
def test_machine_owned_runtime_fields_are_read_only_in_the_admin_for_every_user(client, superuser):
    client.force_login(staff(["view_runtime", "change_runtime"], superuser=superuser))
    runtime = make_runtime(pid=4242, tmux_target="cr-mc-25-aa", runtime_class="tmux-live")
    before = Runtime.objects.filter(pk=runtime.pk).values().get()
    forged = {
        "ticket": make_ticket().pk, "kind": "process", "handle": "x", "host": "elsewhere", "tmux_socket": "/tmp/s",
        "tmux_target": "important-user-session", "pid": "1", "pid_create_time": "1.0", "launch_token": "x",
        "provider": "codex", "model": "m", "cwd": "/", "output_path": "/etc/passwd", "runtime_class": "exited",
        "controller_action": "kill", "started_at_0": "2020-01-01", "started_at_1": "00:00:00",
        "events-TOTAL_FORMS": "0", "events-INITIAL_FORMS": "0",
    }  # fmt: skip
    response = client.post(reverse("admin:runtimes_runtime_change", args=[runtime.pk]), forged)
    assert response.status_code == 302
    assert Runtime.objects.filter(pk=runtime.pk).values().get() == before
    page = client.get(reverse("admin:runtimes_runtime_change", args=[runtime.pk])).content.decode()
    assert 'name="pid"' not in page and 'name="tmux_target"' not in page


@pytest.mark.django_db
def test_only_a_superuser_may_delete_runtimes_and_nobody_deletes_ledger_rows(client):
    runtime = make_runtime()
    event = LivenessEvent.objects.create(runtime=runtime, to_class="pending", reason="launched", source="launch")
    client.force_login(staff(["view_runtime", "delete_runtime", "view_livenessevent", "delete_livenessevent"]))
    assert client.post(reverse("admin:runtimes_runtime_delete", args=[runtime.pk]), {"post": "yes"}).status_code == 403
    assert (
        client.post(reverse("admin:runtimes_livenessevent_delete", args=[event.pk]), {"post": "yes"}).status_code == 403
    )
    assert Runtime.objects.filter(pk=runtime.pk).exists() and LivenessEvent.objects.filter(pk=event.pk).exists()

    client.force_login(staff([], superuser=True))
    assert client.get(reverse("admin:runtimes_runtime_delete", args=[runtime.pk])).status_code == 200


@pytest.mark.django_db
def test_a_requested_stop_shows_in_the_runtime_list(admin_client, tmux_socket, settings):
    runtime = make_runtime(host="host-c", tmux_socket=tmux_socket, runtime_class="tmux-live",
                           controller_action="stop-requested")  # fmt: skip
    page = admin_client.get(reverse("admin:runtimes_runtime_changelist")).content.decode()
    assert "stop requested" in page and runtime.handle in page


@pytest.mark.django_db
def test_a_worker_launched_before_sessions_were_marked_is_still_stopped_by_its_identity(tmux, tmux_socket):
    pid = start_session(tmux, "cr-mc-26-old", "sleep", "600")  # no mark: launched by an older release
    runtime = make_runtime(tmux_socket=tmux_socket, tmux_target="cr-mc-26-old", pid=pid,
                           pid_create_time=create_time_of(pid), runtime_class="tmux-live")  # fmt: skip
    call_command("stop_worker", runtime.handle)
    runtime.refresh_from_db()
    assert (runtime.runtime_class, runtime.controller_action) == ("killed-by-controller", "kill")
    assert "not marked as this runtime's launch: left alone" in runtime.class_message
    assert wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
