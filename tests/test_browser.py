"""The console in a real browser: Debian's Chromium driven by Playwright against a live server,
real tmux workers on a private socket, real reconcile passes. Assertions are by role and text.

Set CONTROLROOM_SCREENSHOT_DIR=docs to (re)write the README's screenshots while these run.
"""

import os
import shutil
import signal
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import Group, Permission, User
from django.utils import timezone

from runtimes.console.views import REFRESH_SECONDS
from runtimes.models import LivenessEvent, Runtime, RuntimeClass
from runtimes.probes import tmux as tmux_probe
from runtimes.reconcile import reconcile
from tests.conftest import make_runtime, make_ticket, start_session, wait_for
from tests.notify_helpers import notify_settings
from tickets.models import Comment, Verdict
from tickets.roles import sync_groups

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.skipif(not shutil.which(CHROMIUM), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"),
    pytest.mark.django_db(transaction=True),
]
playwright_api = pytest.importorskip("playwright.sync_api", reason="pytest-playwright is not installed")
expect = playwright_api.expect

# One refresh of a live part, plus the time to render it on a busy 2-core machine.
ONE_REFRESH_MS = REFRESH_SECONDS * 1000 + 2500
PASSWORD = "a-browser-test-password"


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """Debian's Chromium, never a browser Playwright downloads."""
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": ["--no-sandbox"]}


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args):
    return {**browser_context_args, "viewport": {"width": 1400, "height": 900}}


@pytest.fixture(scope="session", autouse=True)
def _orm_beside_playwright():
    """Playwright's sync API keeps an event loop running in this thread from its first use to the
    end of the session; the ORM calls of this and later tests are synchronous all the same."""
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    yield
    if previous is None:
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)


@pytest.fixture(autouse=True)
def _plain_http_cookies(settings):
    # The live server speaks plain HTTP.
    settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = False


def make_user(role):
    sync_groups(Group, Permission)  # a transactional test starts from an emptied database
    user = User.objects.create_user(f"{role}-browser", password=PASSWORD, is_staff=True)
    user.groups.add(Group.objects.get(name=role))
    return user


def log_in(page, live_server, role):
    user = make_user(role)
    page.goto(f"{live_server.url}/admin/login/?next=/console/")
    page.get_by_label("Username").fill(user.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Fleet")).to_be_visible()


def screenshot(page, name):
    folder = os.environ.get("CONTROLROOM_SCREENSHOT_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / name), full_page=False)


@pytest.fixture
def worker(tmux, tmux_socket):
    """A real worker in a tmux pane that prints a line and waits, reconciled to tmux-live."""
    ticket = make_ticket(title="Fix the flaky importer")
    session = f"cr-{ticket.key.lower()}-a1"
    script = f"print('worker on {ticket.key} says hello', flush=True); import signal; signal.pause()"
    pid = start_session(tmux, session, sys.executable, "-c", script, mark=f"mark-{ticket.key}")
    runtime = make_runtime(
        ticket=ticket, host=settings.CONTROLROOM_HOST, handle=f"tmux:{session}", tmux_socket=tmux_socket,
        tmux_target=session, launch_token=f"mark-{ticket.key}", provider="claude", model="claude-opus-4-7",
        started_at=timezone.now(),
    )  # fmt: skip
    LivenessEvent.objects.create(runtime=runtime, to_class="pending", reason="launched", source="launch")
    assert wait_for(lambda: "says hello" in tmux_probe.capture_pane(tmux_socket, session, 5))
    assert reconciled_to(runtime, RuntimeClass.TMUX_LIVE)
    runtime.refresh_from_db()
    runtime.pane_pid = pid
    return runtime


def reconciled_to(runtime, runtime_class):
    """Run reconcile passes (as the schedule would) until the runtime is in `runtime_class`."""

    def passed():
        reconcile()
        return Runtime.objects.get(pk=runtime.pk).runtime_class == runtime_class

    return wait_for(passed, timeout=15, interval=0.2)


def test_a_worker_that_dies_appears_in_the_attention_lane_within_one_refresh_without_a_reload(
    page, live_server, worker
):
    log_in(page, live_server, "viewers")
    expect(page.get_by_text("Nothing needs attention.")).to_be_visible()
    page.evaluate("window.stillTheSamePage = true")

    os.kill(worker.pane_pid, signal.SIGKILL)
    assert reconciled_to(worker, RuntimeClass.EXITED)  # the scheduled pass, run here

    dead = Runtime.objects.get(pk=worker.pk)
    lane = page.get_by_role("table", name=dead.get_class_reason_display())
    expect(lane).to_contain_text(worker.handle, timeout=ONE_REFRESH_MS)
    expect(lane).to_contain_text(worker.ticket.key)
    expect(lane).to_contain_text(f"worker on {worker.ticket.key} says hello")  # the last output lines
    expect(page.get_by_role("heading", name="Needs attention: 1")).to_be_visible()
    assert page.evaluate("window.stillTheSamePage") is True  # refreshed in place, never reloaded
    expect(page.get_by_role("status").first).to_contain_text("updated")
    expect(lane.get_by_role("link", name="Stop…")).to_have_count(0)  # viewers are read-only
    screenshot(page, "console.png")


def test_the_runtime_page_shows_the_printed_line_and_the_right_attach_command(page, live_server, worker):
    log_in(page, live_server, "viewers")
    page.goto(f"{live_server.url}/admin/runtimes/runtime/{worker.pk}/change/")

    expect(page.get_by_label("output tail")).to_contain_text(f"worker on {worker.ticket.key} says hello")
    expected = f"tmux -L {worker.tmux_socket} attach -t {worker.tmux_target}"
    expect(page.get_by_label("Attach")).to_have_value(expected)
    expect(page.get_by_role("list", name="timeline").get_by_role("listitem")).to_have_count(2)
    expect(page.get_by_role("link", name="Stop…")).to_have_count(0)
    screenshot(page, "runtime.png")


def test_an_operator_stop_asks_for_confirmation_then_records_a_controller_kill(page, live_server, worker, tmux):
    log_in(page, live_server, "operators")
    page.goto(f"{live_server.url}/admin/runtimes/runtime/{worker.pk}/change/")
    page.get_by_role("link", name="Stop…").click()

    expect(page.get_by_role("heading", name=f"Stop {worker.handle}?")).to_be_visible()
    assert Runtime.objects.get(pk=worker.pk).runtime_class == RuntimeClass.TMUX_LIVE  # asking stops nothing
    page.get_by_role("button", name="Yes, stop it").click()

    expect(page.get_by_text("Stopped 1 runtime(s).")).to_be_visible()
    expect(page.get_by_role("heading", name="killed-by-controller controller kill")).to_be_visible()
    runtime = Runtime.objects.get(pk=worker.pk)
    assert (runtime.runtime_class, runtime.controller_action) == ("killed-by-controller", "kill")
    assert runtime.events.filter(reason="controller-kill", source="controller").count() == 1
    assert not tmux.has_session(worker.tmux_target)


def test_the_ticket_page_reads_as_an_activity_feed(page, live_server, worker):
    ticket = worker.ticket
    Comment.objects.create(ticket=ticket, kind="controller", author="controller",
                           body="Coder gate dispatched: claude-opus-4-7 on tmux")  # fmt: skip
    Verdict.objects.create(ticket=ticket, gate="validator", outcome="approved", author="validator",
                           recorded_by="validator", summary="Validator gate complete: tests pass")  # fmt: skip
    log_in(page, live_server, "viewers")
    page.goto(f"{live_server.url}/admin/tickets/ticket/{ticket.pk}/change/")

    feed = page.get_by_role("list").filter(has_text="Coder gate dispatched")
    items = feed.get_by_role("listitem")
    expect(items.first).to_contain_text("Validator gate complete")  # newest first
    expect(items.last).to_contain_text("pending")  # the launch, oldest
    screenshot(page, "ticket.png")


def test_a_notification_reaches_a_json_receiver_once_per_episode_and_once_more_on_resolve(
    page, live_server, worker, receiver, sync_tasks, settings
):
    notify_settings(settings, receiver.url)
    log_in(page, live_server, "operators")

    os.kill(worker.pane_pid, signal.SIGKILL)
    assert reconciled_to(worker, RuntimeClass.EXITED)
    assert wait_for(lambda: len(receiver.posts) == 1)
    assert receiver.titles() == [f"[Control Room] needs attention: {worker.ticket.key} {worker.handle}"]
    reconcile()
    reconcile()  # more passes while the episode lasts repeat nothing

    lane = page.get_by_role("table", name=Runtime.objects.get(pk=worker.pk).get_class_reason_display())
    expect(lane).to_contain_text(worker.handle, timeout=ONE_REFRESH_MS)
    expect(lane.get_by_role("link", name="Stop…")).to_have_count(0)  # it ended: nothing left to stop
    lane.get_by_role("link", name="Recover…").click()
    page.get_by_role("button", name="Yes, mark it completed").click()
    expect(page.get_by_text("Recovered 1 runtime(s).")).to_be_visible()

    assert wait_for(lambda: len(receiver.posts) == 2)
    assert receiver.kinds() == ["needs attention", "resolved"]
    reconcile()
    assert len(receiver.posts) == 2


@pytest.mark.parametrize(
    ("url", "last_column"),
    [("/admin/runtimes/runtime/", "last activity"), ("/admin/tickets/ticket/", "updated")],
)
def test_changelists_fit_1400_px_with_the_sidebar_and_filters_open(page, live_server, url, last_column):
    long = "a-rather-long-ticket-title-that-people-write " * 3
    for n in range(5):
        ticket = make_ticket(title=long, failure_reason="tmux:cr-x session missing; " * 6)
        make_runtime(ticket=ticket, runtime_class=RuntimeClass.TMUX_MISSING, class_reason="session-missing",
                     host=f"worker-host-{n}.example.internal", provider="codex", model="gpt-5.4-mini",
                     class_message="tmux session or pane not found " * 4)  # fmt: skip
    log_in(page, live_server, "viewers")
    page.goto(f"{live_server.url}{url}")

    expect(page.get_by_role("navigation", name="Sidebar")).to_be_visible()
    expect(page.get_by_role("heading", name="Filter")).to_be_visible()
    header = page.get_by_role("columnheader", name=last_column)
    expect(header).to_be_visible()
    box, filters = header.bounding_box(), page.get_by_role("heading", name="Filter").bounding_box()
    right = box["x"] + box["width"]
    assert right <= filters["x"], f"'{last_column}' ends at {right:.0f} px, under the filters at {filters['x']:.0f}"
    assert page.evaluate("document.documentElement.scrollWidth") <= 1400  # no sideways scrolling
