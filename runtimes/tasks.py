"""django-q2 entry points: thin calls into the same code the commands use."""

from runtimes.reconcile import drop_unusable_connections, reconcile
from runtimes.runs import controller

SCHEDULE_PREFIX = "reconcile-runtimes@"


def reconcile_host(host=None):
    """The scheduled reconciliation of one host; its summary lands in django-q2's task admin."""
    drop_unusable_connections()
    return str(reconcile(host=host))


def stop_runtime(runtime_id, by):
    """A stop another host asked for, run by this runtime's own host's cluster."""
    drop_unusable_connections()
    return controller.stop_requested(runtime_id, by)


def schedule_name(host):
    return f"{SCHEDULE_PREFIX}{host}"


def auto_resume(runtime_id):
    """The scheduled auto-resume of one usage-limited run (runtimes.runs.resume)."""
    from runtimes.runs import resume

    drop_unusable_connections()
    return resume.auto_resume(runtime_id)
