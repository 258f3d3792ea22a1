"""API tokens: minted once, stored as a SHA-256 hash, resolved to their scope once per request.

Report endpoints (hooks, notify) resolve through a per-process cache instead: a token's scope
(its host, its runtime) never changes, so only whether it is still live can go stale, and that is
checked again in the report's batch (runtimes.intake.reports.record_reports), in one query for
the whole batch. A revoked token writes nothing either way; a busy reporter costs no query of its
own per report.
"""

import hashlib
import secrets
import threading
from collections import OrderedDict
from datetime import timedelta

from django.utils import timezone

from runtimes import plainsql
from runtimes.models import ApiToken

PREFIX = "crt_"
# last_used_at is refreshed at most this often (a busy reporter does not write on every report).
TOUCH_EVERY = timedelta(seconds=60)
# The most tokens the report endpoints' cache holds (least recently used leave first).
CACHE_SIZE = 4096
UNAUTHORIZED = "a valid, unrevoked API token is required: Authorization: Bearer <token>"


def hash_token(token):
    return hashlib.sha256(token.encode("utf-8", errors="replace")).hexdigest()


def mint(name, role=ApiToken.Role.REPORTER, host="", runtime=None, now=None):
    """Create a token; return (ApiToken, the token text). The text is never stored."""
    token = PREFIX + secrets.token_urlsafe(32)
    row = ApiToken.objects.create(
        name=name, role=role, host=host, runtime=runtime, prefix=token[:10], token_hash=hash_token(token),
        created_at=now or timezone.now(),
    )  # fmt: skip
    return row, token


def _well_formed(token):
    return bool(token) and token.startswith(PREFIX) and len(token) <= 200


def _lookup(token_hash):
    # The hash is unique: no ORDER BY (which .first() adds) is needed to take the one row.
    found = list(ApiToken.objects.filter(token_hash=token_hash, revoked_at__isnull=True).order_by()[:1])
    return found[0] if found else None


def _touch(row, now):
    """Refresh last_used_at, at most once a minute."""
    now = now or timezone.now()
    if row.last_used_at is None or row.last_used_at < now - TOUCH_EVERY:
        # Not once revoked: a cached token may have been, which its batch will find.
        ApiToken.objects.filter(pk=row.pk, revoked_at__isnull=True).update(last_used_at=now)
        row.last_used_at = now


def resolve(token, now=None, cached=False):
    """The live ApiToken for a bearer token, or None (unknown or revoked): one query, plus an
    occasional last_used_at refresh. `cached` (the report endpoints): from the per-process cache
    when it was live before, no query; the caller must then check it is still live where it
    writes (`live`)."""
    if not _well_formed(token):
        return None
    key = hash_token(token)
    row = CACHE.get(key) if cached else None
    if row is None:
        row = _lookup(key)
        if row is None:
            return None
        if cached:
            CACHE.put(key, row)
    _touch(row, now)
    return row


class _Cache:
    """Token hash → ApiToken, least recently used first out; thread-safe."""

    def __init__(self, size):
        self.size = size
        self._rows = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            row = self._rows.get(key)
            if row is not None:
                self._rows.move_to_end(key)
            return row

    def put(self, key, row):
        with self._lock:
            self._rows[key] = row
            while len(self._rows) > self.size:
                self._rows.popitem(last=False)

    def forget(self, token_hashes):
        with self._lock:
            for key in token_hashes:
                self._rows.pop(key, None)


CACHE = _Cache(CACHE_SIZE)


LIVE_READ = plainsql.Read(ApiToken, ("pk", "token_hash", "revoked_at"))


def live(rows):
    """Which of these ApiTokens are still live (not revoked, not deleted), as a set of pks: one
    query. The dead ones leave the cache."""
    rows = {row.pk: row for row in rows}
    found = plainsql.read(LIVE_READ, rows)
    alive = {pk for pk, token_hash, revoked_at in found if revoked_at is None and rows[pk].token_hash == token_hash}
    CACHE.forget(row.token_hash for pk, row in rows.items() if pk not in alive)
    return alive


def may_write(token, runtime):
    """Whether the token may report for this runtime (its scope: one runtime, one host, or any)."""
    if token.runtime_id is not None:
        return token.runtime_id == runtime.pk
    return not token.host or token.host == runtime.host


def out_of_scope(runtime_id):
    """The 403 message for a runtime outside a token's scope."""
    return f"this token may not report for runtime {runtime_id}"


def may_write_host(token, host):
    return token.runtime_id is None and (not token.host or token.host == host)


def revoke(queryset, now=None):
    """Revoke the tokens not yet revoked; return how many."""
    return queryset.filter(revoked_at__isnull=True).update(revoked_at=now or timezone.now())
