"""The console's pages: the full page and the partials htmx re-fetches. Thin: the board computes,
the templates render; login and permissions are the admin's own."""

import math
from datetime import UTC, datetime

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.utils import timezone

from runtimes.console import board
from runtimes.models import FINAL_CLASSES, Runtime, RuntimeClass

VIEW_PERMISSION = "runtimes.view_runtime"
REFRESH_SECONDS = 3


def since_param(request):
    """The `since` query parameter (epoch seconds of the client's last render), or None."""
    raw = request.GET.get("since", "")[:32]
    try:
        value = float(raw)
    except ValueError:
        return None
    if not math.isfinite(value) or value < 0 or value > 1e11:
        return None
    return datetime.fromtimestamp(value, tz=UTC)


def base_context(request, now):
    return {
        "now": now,
        "rendered_ts": f"{now.timestamp():.3f}",
        "since": since_param(request),
        "refresh_seconds": REFRESH_SECONDS,
        "can_act": request.user.has_perm("runtimes.change_runtime"),
        "final_classes": FINAL_CLASSES,
        "usage_limited": RuntimeClass.USAGE_LIMITED,
    }


def console_view(view):
    """Admin login (staff), then the permission to view runtimes."""

    def wrapped(request, *args, **kwargs):
        if not request.user.has_perm(VIEW_PERMISSION):
            raise PermissionDenied
        return view(request, *args, **kwargs)

    wrapped.__name__ = view.__name__
    wrapped.__doc__ = view.__doc__
    return admin.site.admin_view(wrapped)


def attention_context(request, now):
    return {**base_context(request, now), "lane": board.attention_lane(now)}


def fleet_context(request, now):
    return {**base_context(request, now), "fleet": board.fleet(now)}


@console_view
def console(request):
    """The operator console: the fleet strip and the attention lane, refreshing themselves."""
    now = timezone.now()
    context = {
        **admin.site.each_context(request),
        **attention_context(request, now),
        **fleet_context(request, now),
        "title": "Console",
    }
    return TemplateResponse(request, "console/console.html", context)


@console_view
def attention(request):
    """The attention lane alone (htmx polls it)."""
    return TemplateResponse(request, "console/_attention.html", attention_context(request, timezone.now()))


@console_view
def fleet(request):
    """The fleet strip alone (htmx polls it)."""
    return TemplateResponse(request, "console/_fleet.html", fleet_context(request, timezone.now()))


def runtime_live_context(request, runtime, now):
    """What the runtime page shows on top and refreshes: state, timeline, output, attach."""
    events = board.runtime_events(runtime)
    return {
        **base_context(request, now),
        "runtime": runtime,
        "reason_label": runtime.get_class_reason_display(),
        "spans": board.timeline(events, runtime.started_at, now, runtime.ended_at),
        "tail": board.output_tail(runtime),
        "attach": board.attach_command(runtime),
        "usage": board.usage_of(runtime),
    }


@console_view
def runtime_live(request, pk):
    """The runtime page's live part alone (htmx polls it)."""
    runtime = get_object_or_404(Runtime.objects.select_related("ticket"), pk=pk)
    context = runtime_live_context(request, runtime, timezone.now())
    return TemplateResponse(request, "console/_runtime_live.html", context)
