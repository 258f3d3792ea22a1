"""The notification admin: channels with a write-only, redacted URL and a "send test" action;
episodes and deliveries read-only; secrets never on a page."""

import io
import json

import pytest
from django.contrib.auth.models import Group, User
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from runtimes.models import Delivery, NotificationChannel, RuntimeClass
from runtimes.notify import service
from tests.conftest import make_runtime
from tests.notify_helpers import closed_port, notify_settings

pytestmark = pytest.mark.django_db

SECRET = "Sup3rS3cretPassw0rd"


def secret_url(port):
    return f"json://bot:{SECRET}@127.0.0.1:{port}/hooks/{SECRET}?auth={SECRET}"


@pytest.fixture
def superuser(client):
    user = User.objects.create_superuser("root", password="pw")
    client.force_login(user)
    return user


def channel_post(**changes):
    data = {"name": "ops", "url": "", "enabled": "on", "hosts": "", "providers": "", "classes": ""}
    data.update(changes)
    return data


def test_a_channel_added_in_the_admin_never_shows_its_url_back(client, superuser, settings, sync_tasks):
    notify_settings(settings)
    port = closed_port()
    response = client.post(reverse("admin:runtimes_notificationchannel_add"), channel_post(url=secret_url(port)))
    assert response.status_code == 302
    channel = NotificationChannel.objects.get()
    assert channel.url == secret_url(port)  # stored, to be able to send

    make_runtime(runtime_class=RuntimeClass.TMUX_MISSING, class_reason="session-missing")
    service.after_pass(timezone.now())  # a dead channel: the delivery fails with an error
    delivery = Delivery.objects.get()
    assert "Connection error" in delivery.error

    pages = [
        reverse("admin:runtimes_notificationchannel_changelist"),
        reverse("admin:runtimes_notificationchannel_change", args=[channel.pk]),
        reverse("admin:runtimes_notificationchannel_history", args=[channel.pk]),
        reverse("admin:runtimes_notificationchannel_delete", args=[channel.pk]),
        reverse("admin:runtimes_delivery_changelist"),
        reverse("admin:runtimes_delivery_change", args=[delivery.pk]),
        reverse("admin:runtimes_attentionepisode_changelist"),
        reverse("admin:runtimes_livenessevent_changelist"),
    ]
    for page in pages:
        response = client.get(page)
        assert response.status_code == 200, page
        assert SECRET not in response.content.decode(), page
    changelist = client.get(pages[0]).content.decode()
    assert f"json://…@127.0.0.1:{port}/…" in changelist


def test_editing_a_channel_with_a_blank_url_keeps_the_stored_one(client, superuser):
    channel = NotificationChannel.objects.create(name="ops", url=secret_url(9))
    response = client.post(
        reverse("admin:runtimes_notificationchannel_change", args=[channel.pk]), channel_post(providers="codex")
    )
    assert response.status_code == 302
    channel.refresh_from_db()
    assert (channel.url, channel.providers) == (secret_url(9), "codex")


def test_bad_channel_input_is_a_form_error_and_nothing_is_saved(client, superuser):
    add = reverse("admin:runtimes_notificationchannel_add")
    cases = [
        (channel_post(), "An Apprise URL is required."),
        (channel_post(url="nonsense://x"), "Apprise does not understand this URL"),
        (channel_post(url="json://h/", providers="claude,gpt"), "Unknown provider(s) gpt"),
        (channel_post(url="json://h/", classes="tmux-missing,dead"), "Unknown class(es) dead"),
    ]
    for data, error in cases:
        response = client.post(add, data)
        assert response.status_code == 200
        assert error in response.content.decode()
    assert not NotificationChannel.objects.exists()


def test_the_send_test_action_delivers_to_each_selected_channel(client, superuser, receiver, sync_tasks):
    channel = NotificationChannel.objects.create(name="hook", url=receiver.url)
    response = client.post(
        reverse("admin:runtimes_notificationchannel_changelist"),
        {"action": "send_test", "_selected_action": [channel.pk]},
        follow=True,
    )
    assert "Queued 1 test notification(s)" in response.content.decode()
    assert receiver.titles() == ["[Control Room] test notification"]
    assert Delivery.objects.get().status == "sent"


def test_deliveries_and_episodes_are_read_only_even_for_superusers(client, superuser):
    assert client.get(reverse("admin:runtimes_delivery_add")).status_code == 403
    assert client.get(reverse("admin:runtimes_attentionepisode_add")).status_code == 403
    delivery = Delivery.objects.create(channel_key="env:x", target="t", kind="test", title="t", body="b")
    response = client.post(reverse("admin:runtimes_delivery_change", args=[delivery.pk]), {"status": "sent"})
    assert response.status_code == 403
    assert Delivery.objects.get().status == "pending"


def test_viewers_see_channels_redacted_but_cannot_send_tests(client, receiver, sync_tasks):
    user = User.objects.create_user("viewer", password="pw", is_staff=True)
    user.groups.add(Group.objects.get(name="viewers"))
    client.force_login(user)
    channel = NotificationChannel.objects.create(name="hook", url=secret_url(9))
    changelist = reverse("admin:runtimes_notificationchannel_changelist")
    page = client.get(changelist).content.decode()
    assert "json://…@127.0.0.1:9/…" in page and SECRET not in page
    client.post(changelist, {"action": "send_test", "_selected_action": [channel.pk]})
    assert not Delivery.objects.exists()
    assert client.get(reverse("admin:runtimes_delivery_changelist")).status_code == 200


def test_operators_manage_channels(client):
    user = User.objects.create_user("operator", password="pw", is_staff=True)
    user.groups.add(Group.objects.get(name="operators"))
    client.force_login(user)
    response = client.post(reverse("admin:runtimes_notificationchannel_add"), channel_post(url="json://h/"))
    assert response.status_code == 302
    assert NotificationChannel.objects.get().name == "ops"


def test_the_delivery_changelist_runs_the_same_queries_for_few_and_many_rows(client, superuser):
    def queries():
        with CaptureQueriesContext(connection) as captured:
            assert client.get(reverse("admin:runtimes_delivery_changelist")).status_code == 200
        return len(captured)

    def add(count):
        for _ in range(count):
            runtime = make_runtime()
            Delivery.objects.create(
                channel_key="env:x", target="t", kind="opened", title="t", body="b", runtime=runtime
            )

    add(2)
    few = queries()
    add(20)
    assert queries() == few


def test_notify_test_sends_now_to_every_channel_and_fails_loudly_on_a_dead_one(receiver, settings):
    port = closed_port()
    notify_settings(settings, receiver.url, f"json://127.0.0.1:{port}/hook")
    NotificationChannel.objects.create(name="off", url=receiver.url, enabled=False)
    out = io.StringIO()
    with pytest.raises(CommandError, match="1 of 2 channel"):
        call_command("notify_test", stdout=out)
    assert receiver.titles() == ["[Control Room] test notification"]
    lines = out.getvalue().splitlines()
    assert lines[0] == f"CONTROLROOM_NOTIFY_URLS #1 (json://127.0.0.1:{receiver.server.server_port}/…): sent"
    assert lines[1].startswith(f"CONTROLROOM_NOTIFY_URLS #2 (json://127.0.0.1:{port}/…): failed — A Connection error")
    assert list(Delivery.objects.order_by("pk").values_list("kind", "status", "attempts")) == [
        ("test", "sent", 1),
        ("test", "failed", 1),
    ]


def test_notify_test_can_name_admin_channels_and_refuses_unknown_names(receiver, settings):
    notify_settings(settings)
    with pytest.raises(CommandError, match="No channel: set CONTROLROOM_NOTIFY_URLS"):
        call_command("notify_test")
    NotificationChannel.objects.create(name="off", url=receiver.url, enabled=False)
    with pytest.raises(CommandError, match="No notification channel named nope"):
        call_command("notify_test", "--channel", "off", "--channel", "nope")
    assert not Delivery.objects.exists()
    out = io.StringIO()
    call_command("notify_test", "--channel", "off", "--json", stdout=out)
    assert json.loads(out.getvalue()) == {
        "channel": f"off (json://127.0.0.1:{receiver.server.server_port}/…)",
        "status": "sent",
        "error": "",
    }
