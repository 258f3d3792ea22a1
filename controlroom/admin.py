from django.contrib import admin
from django.db.models import Count

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
