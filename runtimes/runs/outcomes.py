"""How a Claude Code or Codex run ended, read from its machine-readable output. Pure functions.

Claude Code print mode (`--output-format json` or `stream-json`): the last `result` object decides,
by `subtype`, then `is_error`, then `terminal_reason` / `api_error_status`. Codex (`exec --json`):
the last `turn.completed` / `turn.failed` event decides; a top-level `error` event is not terminal.
Never the exit code alone. A final message that opens with a verdict (tickets.verdicts) is that
verdict. Any input, however broken, gives an Outcome and never raises.
"""

import json
import re
from dataclasses import asdict, dataclass, replace
from decimal import Decimal, InvalidOperation

from runtimes.text import quote_tail, safe_text
from tickets import verdicts

COMPLETED = "completed"
PARTIAL_USEFUL = "partial-useful"
FAILED = "failed"

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
class Outcome:
    exit_outcome: str
    reason: str
    message: str = ""
    verdict: str | None = None
    final_text: str = ""
    usage: Usage = Usage()

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
        return {**data, **self.usage.as_dict()}


def _text(raw):
    if isinstance(raw, bytes):
        return raw.decode("utf-8", errors="replace")
    return raw if isinstance(raw, str) else ""


def json_objects(text):
    """Each line that is a JSON object, in order (malformed lines are skipped)."""
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            value = json.loads(line)
        except ValueError:
            continue
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
    text = _text(raw)
    seen = quote_tail(text) if text.strip() else "nothing"
    return Outcome(FAILED, "unparseable-output", safe_text(f"no {what} found in the output; saw {seen}", MAX_MESSAGE))


def classify_claude(raw):
    """Classify Claude Code print-mode output (json or stream-json)."""
    text = _text(raw)
    result = None
    started = False
    try:
        whole = json.loads(text)
    except ValueError:
        whole = None
    candidates = [whole] if isinstance(whole, dict) else list(json_objects(text))
    session_id = ""
    for obj in candidates:
        if obj.get("type") == "result":
            result = obj
        elif obj.get("type") in ("system", "assistant", "user"):
            started = True
            if not session_id and isinstance(obj.get("session_id"), str):
                session_id = obj["session_id"]
    if result is None:
        if started:
            return Outcome(
                FAILED, "interrupted", "the run stopped before printing its result", usage=Usage(session_id=session_id)
            )
        return unparseable(raw, "Claude result object")
    return _claude_result(result, session_id)


def _claude_result(result, session_id=""):
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
    text = _text(raw)
    terminal = None
    last_message = ""
    last_error = ""
    seen_events = False
    turn_usages, turns, thread_id = [], 0, ""
    for event in json_objects(text):
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
    if terminal is None:
        if seen_events:
            detail = f"; last error: {last_error}" if last_error else ""
            message = safe_text(f"the stream ended with no terminal event{detail}", MAX_MESSAGE)
            return Outcome(FAILED, "interrupted", message, usage=usage)
        return unparseable(raw, "Codex JSON event")
    if terminal["type"] == "turn.failed":
        error = terminal.get("error")
        message = str(error.get("message", "")) if isinstance(error, dict) else ""
        message = message or last_error or "turn failed"
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
