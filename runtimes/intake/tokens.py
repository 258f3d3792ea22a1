"""API tokens: minted once, stored as a SHA-256 hash, resolved to their scope once per request."""

import hashlib
import secrets
from datetime import timedelta

from django.utils import timezone

from runtimes.models import ApiToken

PREFIX = "crt_"
# last_used_at is refreshed at most this often (a busy reporter does not write on every report).
TOUCH_EVERY = timedelta(seconds=60)


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


def resolve(token, now=None):
    """The live ApiToken for a bearer token, or None (unknown or revoked). One query, plus an
    occasional last_used_at refresh."""
    if not token or not token.startswith(PREFIX) or len(token) > 200:
        return None
    # The hash is unique: no ORDER BY (which .first() adds) is needed to take the one row.
    found = list(ApiToken.objects.filter(token_hash=hash_token(token), revoked_at__isnull=True).order_by()[:1])
    if not found:
        return None
    row = found[0]
    now = now or timezone.now()
    if row.last_used_at is None or row.last_used_at < now - TOUCH_EVERY:
        ApiToken.objects.filter(pk=row.pk).update(last_used_at=now)
        row.last_used_at = now
    return row


def may_write(token, runtime):
    """Whether the token may report for this runtime (its scope: one runtime, one host, or any)."""
    if token.runtime_id is not None:
        return token.runtime_id == runtime.pk
    return not token.host or token.host == runtime.host


def may_write_host(token, host):
    return token.runtime_id is None and (not token.host or token.host == host)


def revoke(queryset, now=None):
    """Revoke the tokens not yet revoked; return how many."""
    return queryset.filter(revoked_at__isnull=True).update(revoked_at=now or timezone.now())
