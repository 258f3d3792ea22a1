"""Send one message through one Apprise URL: the only code that talks to Apprise.

Apprise's own log lines are captured for the error text and kept out of the service's logs
(settings.LOGGING silences the `apprise` logger), because some services' lines can carry tokens.
"""

import logging
import re

import apprise

from runtimes.notify import episodes
from runtimes.text import safe_text

# "2026-11-26 04:55:20,854 - WARNING - " prefixes of Apprise's captured log lines.
_LOG_PREFIX = re.compile(r"^\S+ \S+ - [A-Z]+ - ", re.MULTILINE)
ERROR_CHARS = 1000


class DeliveryError(Exception):
    """A channel refused or could not be reached; the message is already redacted."""


def is_valid_url(url):
    return apprise.Apprise.instantiate(url.strip()) is not None


def send(url, title, body):
    """Deliver or raise DeliveryError with a redacted, bounded reason."""
    server = apprise.Apprise()
    if not server.add(url.strip()):
        raise DeliveryError("Apprise does not understand this channel's URL")
    with apprise.LogCapture(level=logging.WARNING) as captured:
        ok = server.notify(title=title, body=body)
    if not ok:
        lines = _LOG_PREFIX.sub("", captured.getvalue()).strip() or "the channel refused the notification"
        raise DeliveryError(safe_text(episodes.scrub(lines, url), ERROR_CHARS))
