"""Make worker output safe to store: secrets redacted, length bounded. Pure."""

import re

REDACTED = "[REDACTED]"

_SECRET_PATTERNS = [
    # Provider API keys: sk-…, sk-ant-…, sk-proj-…
    re.compile(r"\bsk-[A-Za-z0-9_\-]{12,}"),
    # Authorization headers (any scheme: Basic, Bearer, Digest, token …) and bearer tokens.
    re.compile(
        r"(?i)(?P<keep>\bauthorization[\"']?\s*[:=]\s*[\"']?(?:(?:basic|bearer|digest|token)\s+)?)[^\s\"',}]{4,}"
    ),
    re.compile(r"(?i)\b(bearer|token)\s+[A-Za-z0-9._~+/=\-]{12,}"),
    # A password in a URL: scheme://user:password@host.
    re.compile(r"(?i)(?P<keep>\b[a-z][a-z0-9+.\-]*://[^\s/:@]*:)[^\s/@]+(?=@)"),
    # JSON web tokens (the ChatGPT sign-in's id/access tokens are JWTs).
    re.compile(r"\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}(?:\.[A-Za-z0-9_\-]+)?"),
    # GitHub (classic and fine-grained), GitLab, Slack and AWS credentials.
    re.compile(
        r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|glpat-[A-Za-z0-9_\-]{16,}"
        r"|xox[abprs]-[A-Za-z0-9\-]{10,}|AKIA[0-9A-Z]{16})\b"
    ),
]
# "access_token": "…", OPENAI_API_KEY=…, refresh_token: … (the Codex auth file's fields), and any
# NAME_…SECRET…=…, AWS_SECRET_ACCESS_KEY=…, DB_PASSWORD=…, GITHUB_TOKEN=… assignment.
_SECRET_FIELDS = re.compile(
    r"""(?ix)
    (["']?(?<![a-z0-9_\-])[a-z0-9_\-]{0,64}?(?:access_token|refresh_token|id_token|api[_-]?key|personal_access_token|
       secret(?:[_-]?access)?(?:[_-]?key)?|password|passwd|private[_-]?key|_token)["']?\s*[:=]\s*)
    (["']?)[^"'\s,}]{4,}\2
    """
)


def redact(text):
    # Token shapes first (so "Authorization: Bearer <token>" loses the token, not just "Bearer").
    for pattern in _SECRET_PATTERNS:
        keep = "keep" in pattern.groupindex
        text = pattern.sub(lambda m, keep=keep: (m.group("keep") if keep else "") + REDACTED, text)
    return _SECRET_FIELDS.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}{m.group(2)}", text)


# Text past a cut is redacted with this much to spare, so a secret cut in two is never shown.
_MARGIN = 256


# A lone UTF-16 surrogate (JSON "\\ud800") is no character: PostgreSQL refuses it in text and jsonb.
_SURROGATE = re.compile("[\ud800-\udfff]")


def safe_text(value, limit=2000):
    """Text fit for the ledger, a banner or a log: str, no NULs or lone surrogates, secrets
    redacted, bounded.
    Only the first part of a long text is redacted (enough to fill `limit`), so the work is bounded."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value[: 4 * (limit + _MARGIN)].decode("utf-8", errors="replace")
    text = str(value)
    cut = limit + _MARGIN
    while True:
        shown = redact(_SURROGATE.sub("\ufffd", text[:cut].replace("\x00", "")))
        # Done when nothing was cut, or when a secret cut at the end lies wholly past `limit`.
        if cut >= len(text) or len(shown) >= limit + _MARGIN:
            break
        cut *= 2
    if len(shown) > limit:
        shown = shown[: max(limit - 1, 0)] + "…"
    return shown


def quote_tail(value, limit=200):
    """A short quotation of the end of what was seen (str or bytes), for messages about unreadable
    output. Only the tail is decoded and redacted, however long the value."""
    window = 20 * limit
    tail = value[-4 * window :] if isinstance(value, bytes) else str(value)[-window:]
    if isinstance(tail, bytes):
        tail = tail.decode("utf-8", errors="replace")[-window:]
    text = redact(tail.replace("\x00", ""))
    if len(text) > limit:
        text = "…" + text[-(limit - 1) :]
    return repr(text)
