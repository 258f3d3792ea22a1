"""django-q2 entry points: thin calls into the same code the commands use."""

from runtimes.reconcile import drop_unusable_connections, reconcile

SCHEDULE_PREFIX = "reconcile-runtimes@"


def reconcile_host(host=None):
    """The scheduled reconciliation of one host; its summary lands in django-q2's task admin."""
    drop_unusable_connections()
    return str(reconcile(host=host))


def schedule_name(host):
    return f"{SCHEDULE_PREFIX}{host}"
