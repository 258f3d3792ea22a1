from django.conf import settings
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.template.response import TemplateResponse
from django.urls import path
from django.utils import timezone

from runtimes.console.board import host_health
from runtimes.models import Runtime, RuntimeClass


class ControlRoomAdminSite(admin.AdminSite):
    site_header = "Control Room"
    site_title = "Control Room"
    index_title = "Workers, tickets and their ledger"
    index_template = "admin/controlroom_index.html"

    def index(self, request, extra_context=None):
        """The admin index, with the number of runtimes per class and how many need attention."""
        counts = dict(Runtime.objects.values_list("runtime_class").annotate(n=Count("pk")).order_by())
        extra_context = {
            **(extra_context or {}),
            "class_counts": [(value, counts.get(value, 0)) for value in RuntimeClass.values],
            "attention_count": Runtime.objects.needs_attention().count(),
        }
        return super().index(request, extra_context)

    def get_urls(self):
        return [path("hosts/", self.admin_view(self.hosts_view), name="host_health"), *super().get_urls()]

    def hosts_view(self, request):
        """Host health: every host seen in runtimes or heartbeats, its runtimes and heartbeat age."""
        if not request.user.has_perm("runtimes.view_reconcilerheartbeat"):
            raise PermissionDenied
        now = timezone.now()
        context = {
            **self.each_context(request),
            "title": "Host health",
            "hosts": host_health(now),
            "silent_after": settings.CONTROLROOM["HOST_SILENT_AFTER"],
        }
        return TemplateResponse(request, "admin/host_health.html", context)
