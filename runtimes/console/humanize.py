"""Relative times for people, with the exact time and zone on hover. Pure apart from Django's
formatting helpers; `now` is always passed in."""

from django.contrib.humanize.templatetags.humanize import naturaltime
from django.utils import timezone
from django.utils.html import format_html


def exact(moment):
    """`2026-11-26 04:12:03 UTC` in the current time zone."""
    local = timezone.localtime(moment)
    return f"{local:%Y-%m-%d %H:%M:%S} {local.tzname()}"


def when(moment, now=None):
    """`<time title="exact">12 minutes ago</time>`, or an em dash for no time."""
    if moment is None:
        return "—"
    now = now or timezone.now()
    relative = naturaltime(moment) if abs((now - moment).total_seconds()) >= 1 else "now"
    return format_html('<time datetime="{}" title="{}">{}</time>', moment.isoformat(), exact(moment), relative)


def span(seconds):
    """A duration in a few characters: `45 s`, `12 min`, `3 h 5 min`, `2 d 4 h`."""
    seconds = max(int(seconds), 0)
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def for_span(since, now=None):
    """`<time title="since exact">for 12 min</time>`."""
    if since is None:
        return "—"
    now = now or timezone.now()
    return format_html(
        '<time datetime="{}" title="since {}">for {}</time>',
        since.isoformat(),
        exact(since),
        span((now - since).total_seconds()),
    )
