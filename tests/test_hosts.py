"""Host health in the admin: every host seen in runtimes or heartbeats, with its heartbeat age."""

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.urls import reverse
from django.utils import timezone

from runtimes.models import ReconcilerHeartbeat
from tests.conftest import make_runtime
from tests.test_roles import login_as

pytestmark = pytest.mark.django_db


def beat(host, seconds_ago):
    ReconcilerHeartbeat.objects.create(host=host, finished_at=timezone.now() - timedelta(seconds=seconds_ago))


def rows(page):
    body = page.split('<table id="host-health">', 1)[1].split("</table>", 1)[0]
    return {row.split("</a>", 1)[0].rsplit(">", 1)[1]: row for row in body.split("<tr>")[2:]}


def test_a_host_that_never_sent_a_heartbeat_shows_as_never_reported_beside_reporting_and_silent_ones(client):
    login_as(client, "viewers")
    for _ in range(3):
        make_runtime(host="box-new", runtime_class="tmux-live")
    make_runtime(host="box-ok", runtime_class="exited")
    beat("box-ok", 12)
    beat("box-gone", 3600)  # reported long ago, has no runtimes any more
    page = client.get(reverse("admin:host_health")).content.decode()
    hosts = rows(page)
    assert set(hosts) == {"box-new", "box-ok", "box-gone"}
    assert "never reported" in hosts["box-new"] and "<td>3</td>" in hosts["box-new"]
    assert "reporting" in hosts["box-ok"] and re.search(r"\((1[2-9]|[2-9]\d) s\)", hosts["box-ok"])
    assert "<td>1</td>" in hosts["box-ok"]
    assert "silent" in hosts["box-gone"] and "never reported" not in hosts["box-gone"]


def test_host_health_takes_the_same_number_of_queries_for_one_host_or_many(client, django_assert_max_num_queries):
    login_as(client, "viewers")
    make_runtime(host="h0")
    with django_assert_max_num_queries(20) as one:
        client.get(reverse("admin:host_health"))
    for n in range(1, 8):
        make_runtime(host=f"h{n}")
        beat(f"h{n}", n)
    with django_assert_max_num_queries(len(one.captured_queries)):
        page = client.get(reverse("admin:host_health")).content.decode()
    assert len(rows(page)) == 8


def test_the_admin_index_links_to_host_health_and_only_staff_who_may_read_heartbeats_see_it(client):
    login_as(client, "viewers")
    assert reverse("admin:host_health") in client.get(reverse("admin:index")).content.decode()
    client.logout()
    nobody = User.objects.create_user("nobody", password="pw", is_staff=True)
    client.force_login(nobody)
    assert client.get(reverse("admin:host_health")).status_code == 403
    assert reverse("admin:host_health") not in client.get(reverse("admin:index")).content.decode()


def test_a_host_name_is_escaped_on_the_host_health_page(client):
    login_as(client, "viewers")
    make_runtime(host="<script>x</script>")
    page = client.get(reverse("admin:host_health")).content.decode()
    assert "<script>x</script>" not in page and "&lt;script&gt;x&lt;/script&gt;" in page
