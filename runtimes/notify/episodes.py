"""When to notify: attention episodes, the quiet period, channel filters, digests. Pure: no Django,
no network, no clock (`now` is an argument).

An episode opens when a runtime starts needing attention (one "opened" notice) and ends when it
stops (one "resolved" notice). A runtime that can still come back on its own (a live class) holds
its resolved notice for the quiet period: if it needs attention again meanwhile, the same episode
reopens and nothing more is sent, so a flapping worker costs one notice, not one per flap.
"""

from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

OPEN = "open"
CLOSING = "closing"
CLOSED = "closed"

# Steps of the plan.
START = "start"  # open a new episode and announce it
REOPEN = "reopen"  # back within the quiet period: the held episode continues, nothing is sent
HOLD = "hold"  # ended, but may flap back: hold the resolved notice
RESOLVE = "resolve"  # ended for good (or quiet enough): close and announce

# Apprise schemes whose host is an ordinary web address (shown); for every other scheme the host
# part may itself be a token (tgram://BOT_TOKEN/…), so nothing after the scheme is shown.
WEBHOOK_SCHEMES = frozenset({"json", "jsons", "form", "forms", "xml", "xmls"})


@dataclass(frozen=True)
class Subject:
    """One runtime as the planner sees it: does it need attention now, can it still come back on
    its own, and its unfinished episode (if any)."""

    runtime_id: int
    attention: bool
    settled: bool = False  # a final class or a ticket that expects no worker: it cannot flap back
    episode_id: int | None = None
    episode_state: str | None = None  # OPEN | CLOSING
    closed_at: datetime | None = None


@dataclass(frozen=True)
class Step:
    action: str
    runtime_id: int
    episode_id: int | None = None
    from_state: str | None = None

    @property
    def announces(self):
        return self.action in (START, RESOLVE)


def plan(subjects, now, quiet):
    """The steps that bring the episodes in line with the subjects' attention state."""
    steps = []
    for s in subjects:
        if s.attention:
            if s.episode_id is None:
                steps.append(Step(START, s.runtime_id))
            elif s.episode_state == CLOSING:
                steps.append(Step(REOPEN, s.runtime_id, s.episode_id, CLOSING))
        elif s.episode_id is not None:
            if s.episode_state == OPEN:
                action = RESOLVE if s.settled or quiet <= 0 else HOLD
                steps.append(Step(action, s.runtime_id, s.episode_id, OPEN))
            elif s.settled or s.closed_at is None or (now - s.closed_at).total_seconds() >= quiet:
                steps.append(Step(RESOLVE, s.runtime_id, s.episode_id, CLOSING))
    return steps


@dataclass(frozen=True)
class Notice:
    """One thing to tell: an episode opened or resolved (or a one-off such as a budget warning)."""

    kind: str  # "opened" | "resolved" | "budget-warning" | "test"
    title: str
    body: str
    line: str  # its one-line form, used in a digest
    runtime_id: int | None = None
    episode_id: int | None = None
    host: str = ""
    provider: str = ""
    runtime_class: str = ""


@dataclass(frozen=True)
class Route:
    """A channel as the planner sees it: an identity, a redacted label, optional filters."""

    key: str
    label: str
    hosts: frozenset = frozenset()
    providers: frozenset = frozenset()
    classes: frozenset = frozenset()

    def accepts(self, notice):
        """Blank filters accept everything; a notice about no runtime passes every filter."""
        if notice.runtime_id is None:
            return True
        return (
            (not self.hosts or notice.host in self.hosts)
            and (not self.providers or notice.provider in self.providers)
            and (not self.classes or notice.runtime_class in self.classes)
        )


@dataclass(frozen=True)
class Outgoing:
    route: Route
    kind: str
    title: str
    body: str
    notice: Notice | None = None  # None for a digest


def route_notices(notices, routes, digest_over):
    """What each channel gets: its matching notices one by one, or one digest when there are
    more than `digest_over` of them."""
    out = []
    for route in routes:
        mine = [n for n in notices if route.accepts(n)]
        if len(mine) > digest_over:
            opened = sum(1 for n in mine if n.kind == "opened")
            title = f"[Control Room] {len(mine)} attention changes ({opened} need attention)"
            out.append(Outgoing(route, "digest", title, "\n".join(n.line for n in mine)))
        else:
            out.extend(Outgoing(route, n.kind, n.title, n.body, n) for n in mine)
    return out


def redact_url(url):
    """An Apprise URL fit to show: the scheme, and for web-hook schemes the host; every user,
    password, token, path and query replaced by '…'."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return "…"
    scheme = parts.scheme.lower()
    if not scheme or not parts.netloc:
        return "…"
    userinfo = "…@" if "@" in parts.netloc else ""
    if scheme not in WEBHOOK_SCHEMES:
        return f"{scheme}://{userinfo}…"
    try:
        host, port = parts.hostname or "", f":{parts.port}" if parts.port else ""
    except ValueError:
        return f"{scheme}://{userinfo}…"
    rest = "/…" if parts.path.strip("/") or parts.query else ""
    return f"{scheme}://{userinfo}{host}{port}{rest}"


def secrets_of(url):
    """The pieces of an Apprise URL that may be secret, longest first (for scrubbing text)."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return [url]
    pieces = {url, url.strip(), parts.netloc, parts.path, parts.query}
    pieces.update(filter(None, (parts.username, parts.password)))
    pieces.update(parts.path.split("/"))
    for pair in parts.query.split("&"):
        pieces.update(pair.split("=", 1))
    if parts.scheme.lower() not in WEBHOOK_SCHEMES:
        pieces.add(parts.hostname or "")
        pieces.update(parts.netloc.replace("@", ":").split(":"))
    return sorted((p for p in pieces if len(p) >= 4), key=len, reverse=True)


def scrub(text, url):
    """Text (an error, a log line) with every secret piece of `url` replaced by '…'."""
    for piece in secrets_of(url):
        text = text.replace(piece, "…")
    return text
