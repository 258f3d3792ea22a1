"""Telling this host's watcher "look at runtime N" the moment a runtime it should watch is created
here (a launch, an API or Hermes registration), so it is watched at once instead of at the
watcher's next "changed since" query (every CONTROLROOM_WATCH_SYNC seconds, the safety net).

One datagram `{"runtime": N}` to CONTROLROOM_WATCH_SOCKET, sent after the row commits. It is a hint,
never a duty: no watcher listening, a full socket buffer or any other error is ignored, and the
caller never waits or fails because of it.
"""

import json
import socket

from django.conf import settings
from django.db import transaction

from runtimes.models import Runtime

# The kinds of runtime the watcher holds a process for (websocket consoles have none).
WATCHED_KINDS = (Runtime.Kind.TMUX, Runtime.Kind.PROCESS)


def announce(runtime):
    """Send the watcher of this host one "look at this runtime" datagram, if the runtime is of this
    host and of a watched kind. Never raises and never blocks."""
    path = settings.CONTROLROOM["WATCH_SOCKET"]
    if not path or runtime.pk is None or runtime.host != settings.CONTROLROOM_HOST:
        return
    if runtime.kind not in WATCHED_KINDS:
        return
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
            client.setblocking(False)
            client.sendto(json.dumps({"runtime": runtime.pk}).encode(), path)
    except OSError:
        pass


def announce_on_commit(runtime):
    """Announce the runtime once the current transaction commits (at once outside one): before
    that, the watcher could not see its row."""
    transaction.on_commit(lambda: announce(runtime))
