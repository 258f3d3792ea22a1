from django import template

from runtimes.admin import BADGE_COLOURS, class_badge
from runtimes.console import humanize

register = template.Library()


@register.simple_tag
def when(moment, now=None):
    return humanize.when(moment, now)


@register.simple_tag
def for_span(since, now=None):
    return humanize.for_span(since, now)


@register.simple_tag
def badge(runtime_class):
    return class_badge(runtime_class)


@register.filter
def class_colour(runtime_class):
    return BADGE_COLOURS.get(runtime_class, "#4a5568")
