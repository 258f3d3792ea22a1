"""How a Claude Code or Codex run ended, read from its machine-readable output. Pure functions.

Claude Code print mode (`--output-format json` or `stream-json`): the last `result` object decides,
by `subtype`, then `is_error`, then `terminal_reason` / `api_error_status`. Codex (`exec --json`):
the last `turn.completed` / `turn.failed` event decides; a top-level `error` event is not terminal.
Never the exit code alone. A final message that opens with a verdict (tickets.verdicts) is that
verdict. A run stopped by a plan usage limit (Claude "You've hit your session limit · resets 3pm",
a rejected `rate_limit_event`, `rate_limit` errors; Codex "You’ve hit your usage limit … try again
at 6:39 AM") is paused, not failed: no exit outcome, reason `usage-limit`, with the reset as the CLI
said it (`limit_resets_at` turns it into a time). Any input, however broken, gives an Outcome and
never raises.
"""

import json
import re
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from runtimes.text import quote_tail, safe_text
from tickets import verdicts

COMPLETED = "completed"
PARTIAL_USEFUL = "partial-useful"
FAILED = "failed"
# A run stopped by a plan usage limit has not ended its work: it is paused (no exit outcome).
PAUSED = ""
USAGE_LIMIT = "usage-limit"

# Verdicts that make a run's result what the worker said it was.
_FINISHED_VERDICTS = (verdicts.DONE, verdicts.REVIEW, verdicts.QUESTION, verdicts.APPROVED, verdicts.CHANGES_REQUESTED)

MAX_MESSAGE = 2000
# An HTTP status quoted in error text ("API Error: 429 …"), as a whole number.
_STATUS_401 = re.compile(r"(?<![\w.])401(?![\w.])")
_STATUS_429 = re.compile(r"(?<![\w.])429(?![\w.])")


@dataclass(frozen=True)
class Usage:
    """What a run used, as its CLI reported it (None = not reported, never a guessed zero)."""

    turns: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_tokens: int | None = None
    cost_usd: Decimal | None = None
    session_id: str = ""  # Claude session_id / Codex thread_id

    def as_dict(self):
        data = asdict(self)
        data["cost_usd"] = None if self.cost_usd is None else float(self.cost_usd)
        return data


@dataclass(frozen=True)
class UsageLimit:
    """A plan usage limit the run stopped on, and when it resets as the CLI said it."""

    kind: str = ""  # session, weekly, Opus, Sonnet (Claude's wording), usage (Codex), rate_limit
    resets_at: float | None = None  # epoch seconds (Claude's rate_limit_event resetsAt)
    reset_text: str = ""  # local clock text: "3pm", "6:39 AM", "Nov 27, 2026 6:39 AM"

    def as_dict(self):
        return asdict(self)


@dataclass(frozen=True)
class Outcome:
    exit_outcome: str
    reason: str
    message: str = ""
    verdict: str | None = None
    final_text: str = ""
    usage: Usage = Usage()
    limit: UsageLimit | None = None

    @property
    def paused(self):
        return self.limit is not None

    @property
    def turns(self):
        return self.usage.turns

    @property
    def cost_usd(self):
        return self.usage.cost_usd

    def as_dict(self):
        """JSON-ready (the ledger's `observed`, classify_output): usage fields flattened."""
        data = asdict(self)
        data.pop("final_text")
        data.pop("usage")
        data["limit"] = self.limit.as_dict() if self.limit else None
        return {**data, **self.usage.as_dict()}


def _loads(data):
    """json.loads that never raises: None for malformed, non-UTF-8 or too deeply nested input."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def json_objects(raw):
    """Each line (str or bytes) that is a JSON object, in order. Malformed lines, lines that are not
    UTF-8 and objects nested too deep for the parser are skipped: no input makes this raise."""
    newline, opening, closing = (b"\n", b"{", b"}") if isinstance(raw, bytes) else ("\n", "{", "}")
    for line in raw.split(newline):
        line = line.strip()
        if not (line.startswith(opening) and line.endswith(closing)):
            continue
        value = _loads(line)
        if isinstance(value, dict):
            yield value


def _number(value, cast):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return cast(value)
    except (OverflowError, ValueError):
        return None


# Token counts and costs beyond these are garbage, not usage (and would overflow the columns).
_MAX_TOKENS = 10**15
_MAX_COST = Decimal("999999")


def _count(value):
    number = _number(value, int)
    return number if number is not None and 0 <= number < _MAX_TOKENS else None


def _cost(value):
    """A reported cost as a Decimal (from its decimal text, so 0.0123 stays 0.0123)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        cost = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return cost.quantize(Decimal("0.000001")) if cost.is_finite() and 0 <= cost < _MAX_COST else None


def _sum(values):
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def claude_usage(result, session_id=""):
    """Turns, tokens and cost from a Claude result object. Input counts the tokens billed as input
    (input_tokens + cache_creation_input_tokens); cached counts cache reads."""
    usage = result.get("usage") if isinstance(result.get("usage"), dict) else {}
    session = result.get("session_id") if isinstance(result.get("session_id"), str) else ""
    return Usage(
        turns=_count(result.get("num_turns")),
        input_tokens=_sum([_count(usage.get("input_tokens")), _count(usage.get("cache_creation_input_tokens"))]),
        output_tokens=_count(usage.get("output_tokens")),
        cached_tokens=_count(usage.get("cache_read_input_tokens")),
        cost_usd=_cost(result.get("total_cost_usd")),
        session_id=(session or session_id)[:200],
    )


def price(usage, input_per_mtok, cached_per_mtok, output_per_mtok):
    """The cost of `usage` at per-million-token prices (Decimals; None = unknown price). Codex's
    input_tokens include the cached ones; cached tokens cost the cached price (else the input
    price). Returns the usage with cost_usd set, or unchanged when a price or count is missing."""
    if usage.cost_usd is not None or input_per_mtok is None or output_per_mtok is None:
        return usage
    if usage.input_tokens is None or usage.output_tokens is None:
        return usage
    cached = min(usage.cached_tokens or 0, usage.input_tokens)
    cached_price = input_per_mtok if cached_per_mtok is None else cached_per_mtok
    uncached = usage.input_tokens - cached
    total = uncached * input_per_mtok + cached * cached_price + usage.output_tokens * output_per_mtok
    return replace(usage, cost_usd=(total / Decimal(1_000_000)).quantize(Decimal("0.000001")))


# "You've hit your session limit · resets 3pm", "You've hit your limit · resets 1pm (Europe/Lisbon)",
# weekly / Opus / Sonnet limits (Claude); "You’ve hit your usage limit. … try again at 6:39 AM." (Codex).
_LIMIT = re.compile(r"you(?:'|’|`)?ve hit your (?:(?P<kind>[\w-]+) )?limit", re.IGNORECASE)
_CLAUDE_RESET = re.compile(r"resets\s+(?:at\s+)?(?P<text>[^\n·]{1,80}?)\s*(?:[.\n·]|$)", re.IGNORECASE)
_CODEX_RESET = re.compile(r"try again at\s+(?P<text>[^\n]{1,80}?)\s*\.?\s*(?:\n|$)", re.IGNORECASE)
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_CLOCK = re.compile(
    r"""^(?:(?P<month>jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?\s+(?P<day>\d{1,2})
        (?:,?\s+(?P<year>\d{4}))?,?\s+(?:at\s+)?)?
        (?P<hour>\d{1,2})(?::(?P<minute>\d{2}))?\s*(?P<ampm>[ap])\.?\s?m\.?
        (?:\s*\((?P<zone>[A-Za-z][\w/+\-]{0,63})\))?\s*$""",
    re.IGNORECASE | re.VERBOSE,
)


def usage_limit_in(text):
    """The usage limit a Claude or Codex message reports, or None."""
    match = _LIMIT.search(text)
    if match is None:
        return None
    kind = (match.group("kind") or "").lower()
    if kind and kind not in ("session", "weekly", "opus", "sonnet", "usage"):
        return None
    rest = text[match.end() :]
    reset = _CLAUDE_RESET.search(rest) or _CODEX_RESET.search(rest)
    return UsageLimit(kind=kind or "usage", reset_text=reset.group("text").strip() if reset else "")


def _zone(name, fallback=UTC):
    try:
        return ZoneInfo(name) if name else fallback
    except (ZoneInfoNotFoundError, ValueError):
        return fallback


def limit_resets_at(limit, now, host_zone="UTC"):
    """When a usage limit resets, as an aware datetime, or None when the CLI did not say.

    An epoch (Claude's resetsAt, seconds or milliseconds) wins. Otherwise the reset text is a
    clock time in the worker host's time zone `host_zone` (or the zone the text names, as in
    "1pm (Europe/Lisbon)"); a time of day already past means the next day. Pure: `now` is given."""
    if limit.resets_at is not None:
        seconds = limit.resets_at / 1000 if limit.resets_at > 1e11 else limit.resets_at
        try:
            return datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    match = _CLOCK.match(limit.reset_text.strip())
    if match is None:
        return None
    hour, minute = int(match.group("hour")), int(match.group("minute") or 0)
    if not (1 <= hour <= 12 and minute < 60):
        return None
    hour = hour % 12 + (12 if match.group("ampm").lower() == "p" else 0)
    zone = _zone(match.group("zone"), _zone(host_zone))
    local_now = now.astimezone(zone)
    try:
        if match.group("month"):
            year = int(match.group("year") or local_now.year)
            month = _MONTHS.index(match.group("month").lower()[:3]) + 1
            return datetime(year, month, int(match.group("day")), hour, minute, tzinfo=zone)
        candidate = datetime.combine(local_now.date(), datetime.min.time(), zone).replace(hour=hour, minute=minute)
    except ValueError:
        return None
    if candidate <= local_now:
        # Already past today: the next day at that clock time (wall clock, so DST keeps the hour).
        candidate = datetime.combine(local_now.date() + timedelta(days=1), candidate.time(), zone)
    return candidate


def error_reason(text, status=None):
    """The reason code for an API/account error, from its HTTP status and words."""
    lowered = text.lower()
    if "not supported when using codex with a chatgpt account" in lowered or "unsupported model" in lowered:
        return "unsupported-model"
    if "does not appear in the list of models" in lowered:
        return "unsupported-model"
    if "model" in lowered and (status == 404 or "not found" in lowered or "not_found_error" in lowered):
        return "unsupported-model"
    if (
        status in (401, 403)
        or _STATUS_401.search(lowered)
        or any(
            words in lowered
            for words in ("invalid api key", "not logged in", "authentication", "unauthorized", "/login")
        )
    ):
        return "auth-error"
    if "credit balance" in lowered or "billing" in lowered:
        return "billing-error"
    if (
        status == 429
        or _STATUS_429.search(lowered)
        or any(w in lowered for w in ("rate limit", "hit your limit", "usage limit"))
    ):
        return "rate-limited"
    if status == 529 or "overloaded" in lowered:
        return "overloaded"
    return "api-error"


def _with_verdict(outcome, reason, message, final_text, usage=Usage()):
    """Apply the final message's verdict to a finished run."""
    verdict = verdicts.parse_verdict(final_text)
    if verdict == verdicts.PARTIAL:
        outcome, reason = PARTIAL_USEFUL, "verdict-partial"
    elif verdict == verdicts.FAILED:
        outcome, reason = FAILED, "verdict-failed"
    return Outcome(outcome, reason, safe_text(message, MAX_MESSAGE), verdict, safe_text(final_text, 20_000), usage)


def unparseable(raw, what):
    seen = quote_tail(raw) if raw and raw.strip() else "nothing"
    return Outcome(FAILED, "unparseable-output", safe_text(f"no {what} found in the output; saw {seen}", MAX_MESSAGE))


def _rate_limit_signal(obj):
    """A usage-limit fact in one stream-json line: a rejected rate_limit_event (its resetsAt and
    rateLimitType), an assistant message with error rate_limit, or a StopFailure rate_limit hook
    event (--include-hook-events). None for any other line."""
    kind = obj.get("type")
    if kind == "rate_limit_event" and isinstance(obj.get("rate_limit_info"), dict):
        info = obj["rate_limit_info"]
        if info.get("status") != "rejected":
            return None
        resets = _number(info.get("resetsAt"), float)
        limit_type = info.get("rateLimitType") if isinstance(info.get("rateLimitType"), str) else ""
        return UsageLimit(kind=limit_type[:40] or "rate_limit", resets_at=resets)
    if kind == "assistant" and obj.get("error") == "rate_limit":
        return UsageLimit(kind="rate_limit")
    for report in (obj, obj.get("input"), obj.get("hook_input")):
        if isinstance(report, dict) and (report.get("hook_event_name"), report.get("error")) == (
            "StopFailure",
            "rate_limit",
        ):
            return UsageLimit(kind="rate_limit")
    return None


def _merge_limits(first, second):
    """Two facts about one limit: the epoch and clock text of either, the more precise kind."""
    if first is None or second is None:
        return first or second
    return UsageLimit(
        kind=second.kind if first.kind in ("rate_limit", "usage") else first.kind,
        resets_at=first.resets_at if first.resets_at is not None else second.resets_at,
        reset_text=first.reset_text or second.reset_text,
    )


def classify_claude(raw):
    """Classify Claude Code print-mode output (json or stream-json)."""
    raw = raw if isinstance(raw, (bytes, str)) else ""
    result = None
    started = False
    # `--output-format json` prints one object, perhaps over several lines; stream-json one per line.
    whole = _loads(raw) if raw.lstrip()[:1] in ("{", b"{") else None
    candidates = [whole] if isinstance(whole, dict) else list(json_objects(raw))
    session_id = ""
    limit = None
    for obj in candidates:
        if obj.get("type") == "result":
            result = obj
        elif obj.get("type") in ("system", "assistant", "user"):
            started = True
            if not session_id and isinstance(obj.get("session_id"), str):
                session_id = obj["session_id"]
        limit = _merge_limits(limit, _rate_limit_signal(obj))
    if result is None:
        if limit:
            message = "stopped on a usage limit before printing its result"
            return Outcome(PAUSED, USAGE_LIMIT, message, usage=Usage(session_id=session_id), limit=limit)
        if started:
            return Outcome(
                FAILED, "interrupted", "the run stopped before printing its result", usage=Usage(session_id=session_id)
            )
        return unparseable(raw, "Claude result object")
    return _claude_result(result, session_id, limit)


def _claude_result(result, session_id="", limit=None):
    subtype = result.get("subtype") if isinstance(result.get("subtype"), str) else ""
    is_error = result.get("is_error") is True
    final = result.get("result") if isinstance(result.get("result"), str) else ""
    errors = result.get("errors") if isinstance(result.get("errors"), list) else []
    error_text = "; ".join(str(e) for e in errors)
    terminal = result.get("terminal_reason") if isinstance(result.get("terminal_reason"), str) else ""
    status = _number(result.get("api_error_status"), int)
    usage = claude_usage(result, session_id)
    verdict = verdicts.parse_verdict(final)

    if subtype == "success" and not is_error:
        return _with_verdict(COMPLETED, "completed", "finished", final, usage)
    if verdict in _FINISHED_VERDICTS and not (subtype == "success" and is_error):
        # The worker said it finished; a limit mentioned or hit afterwards does not undo that.
        return _with_verdict(COMPLETED, "completed", f"{subtype or 'result'} with a {verdict} verdict", final, usage)
    limit = _merge_limits(usage_limit_in(final) or usage_limit_in(error_text), limit)
    if limit:
        message = final or error_text or f"usage limit ({limit.kind})"
        return Outcome(PAUSED, USAGE_LIMIT, safe_text(message, MAX_MESSAGE), None, "", usage, limit)
    if subtype == "error_max_turns" or terminal == "max_turns":
        return _with_verdict(
            PARTIAL_USEFUL, "max-turns", error_text or "reached the maximum number of turns", final, usage
        )
    if subtype == "error_max_budget_usd":
        return _with_verdict(PARTIAL_USEFUL, "max-budget", error_text or "reached the maximum budget", final, usage)
    if subtype == "error_max_structured_output_retries":
        return _with_verdict(FAILED, "structured-output-retries", error_text or subtype, final, usage)
    if terminal.startswith("aborted"):
        return _with_verdict(FAILED, "interrupted", f"turn interrupted ({terminal})", final, usage)
    message = final or error_text or terminal or subtype or "error"
    if subtype == "error_during_execution" and not (final or status or terminal == "api_error"):
        return _with_verdict(FAILED, "execution-error", message, "", usage)
    if status:
        message = f"HTTP {status}: {message}"
    return Outcome(FAILED, error_reason(message, status), safe_text(message, MAX_MESSAGE), None, "", usage)


def codex_usage(turn_usages, turns, thread_id):
    """Turns and tokens summed over a Codex stream's turn.completed usages (no cost: Codex
    reports none; `price` adds it from the profile's prices)."""

    def total(key):
        return _sum([_count(u.get(key)) for u in turn_usages])

    return Usage(
        turns=turns or None,
        input_tokens=total("input_tokens"),
        output_tokens=total("output_tokens"),
        cached_tokens=total("cached_input_tokens"),
        session_id=thread_id[:200],
    )


def classify_codex(raw):
    """Classify `codex exec --json` output (JSONL events)."""
    raw = raw if isinstance(raw, (bytes, str)) else ""
    terminal = None
    last_message = ""
    last_error = ""
    seen_events = False
    turn_usages, turns, thread_id = [], 0, ""
    for event in json_objects(raw):
        kind = event.get("type")
        if not isinstance(kind, str):
            continue
        seen_events = True
        if kind in ("turn.completed", "turn.failed"):
            terminal = event
            turns += 1
            if kind == "turn.completed" and isinstance(event.get("usage"), dict):
                turn_usages.append(event["usage"])
        elif kind == "thread.started" and isinstance(event.get("thread_id"), str):
            thread_id = thread_id or event["thread_id"]
        elif kind == "error":
            last_error = str(event.get("message", ""))
        elif kind == "item.completed":
            item = event.get("item")
            if isinstance(item, dict) and item.get("type") == "agent_message" and isinstance(item.get("text"), str):
                last_message = item["text"]
    usage = codex_usage(turn_usages, turns, thread_id)
    failure = ""
    if terminal is not None and terminal["type"] == "turn.failed":
        error = terminal.get("error")
        failure = str(error.get("message", "")) if isinstance(error, dict) else ""
    if terminal is None or terminal["type"] == "turn.failed":
        limit = usage_limit_in(failure) or usage_limit_in(last_error)
        if limit:
            message = safe_text(failure or last_error, MAX_MESSAGE)
            return Outcome(PAUSED, USAGE_LIMIT, message, None, safe_text(last_message, 20_000), usage, limit)
    if terminal is None:
        if seen_events:
            detail = f"; last error: {last_error}" if last_error else ""
            message = safe_text(f"the stream ended with no terminal event{detail}", MAX_MESSAGE)
            return Outcome(FAILED, "interrupted", message, usage=usage)
        return unparseable(raw, "Codex JSON event")
    if terminal["type"] == "turn.failed":
        message = failure or last_error or "turn failed"
        return Outcome(
            FAILED, error_reason(message), safe_text(message, MAX_MESSAGE), None, safe_text(last_message, 20_000), usage
        )
    tokens = usage.output_tokens
    message = "turn completed" + (f" ({tokens} output tokens)" if tokens is not None else "")
    return _with_verdict(COMPLETED, "completed", message, last_message, usage)


def classify(provider, raw):
    if provider == "codex":
        return classify_codex(raw)
    return classify_claude(raw)
