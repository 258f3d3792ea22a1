"""django-q2 entry point for notifications: a thin call into the service."""

from runtimes.notify import service


def deliver(delivery_id):
    """Attempt one delivery; the summary lands in django-q2's task admin (no URL, no secret)."""
    return service.deliver(delivery_id)
