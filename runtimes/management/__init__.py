from django.core.management.base import CommandError

from runtimes.models import Runtime


def runtime_for_handle(handle, host=None):
    """The runtime with this handle (on `host` when given), or a CommandError saying what to do."""
    runtimes = Runtime.objects.filter(handle=handle).select_related("ticket")
    if host:
        runtimes = runtimes.filter(host=host)
    found = list(runtimes[:2])
    if not found:
        where = f" on host {host!r}" if host else ""
        raise CommandError(f"No runtime with handle {handle!r}{where}. Check the handle in the admin's runtime list.")
    if len(found) > 1:
        raise CommandError(f"Handle {handle!r} exists on several hosts; add --host to say which.")
    return found[0]
