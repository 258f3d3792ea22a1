"""What a worker's report means: Claude Code hook inputs and Codex notify/hook JSON mapped to one
Signal. Pure: no Django, no I/O, no clock (the caller passes `now`).

The shapes are the CLIs' own (see the reference's section 6): every Claude hook input has
`hook_event_name`; Codex's notify JSON has `type: "agent-turn-complete"`; Codex command hooks use
Claude's field names.
"""

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from runtimes import liveness


class ReportError(ValueError):
    """The payload is not a report this endpoint takes; the message says why."""


@dataclass(frozen=True)
class Signal:
    """One report, read: the reason it stands for, whether it ends the turn or the session (the run
    may be over: harvest it), and the fields worth keeping in the ledger."""

    event: str
    reason: str | None  # liveness.WORKING, a waiting reason, USAGE_LIMIT; None: says nothing new
    ends_run: bool = False
    resumes_at: datetime | None = None
    observed: dict = field(default_factory=dict)


# Claude Code Notification types.
NOTIFICATION_REASONS = {
    "permission_prompt": liveness.PERMISSION_PROMPT,
    "elicitation_dialog": liveness.ELICITATION,
    "idle_prompt": liveness.IDLE_PROMPT,
    # A sign-in finished or a question was answered: the worker goes on.
    "auth_success": liveness.WORKING,
    "elicitation_complete": liveness.WORKING,
    "elicitation_response": liveness.WORKING,
}
# Hook events that show the worker working.
WORKING_EVENTS = {
    "UserPromptSubmit", "PreToolUse", "PostToolUse", "PostToolUseFailure", "SubagentStart", "SubagentStop",
    "PreCompact", "SessionStart", "Stop",
}  # fmt: skip
# Fields kept in the ledger's `observed` (bounded and redacted by the caller).
KEPT_FIELDS = (
    "hook_event_name", "notification_type", "title", "message", "tool_name", "error", "reason", "session_id",
    "turn_id", "type", "thread-id", "turn-id", "stop_hook_active", "permission_mode",
)  # fmt: skip
# Claude ends a session with SessionEnd, a turn with Stop; StopFailure replaces Stop after an API error.
ENDING_EVENTS = {"Stop", "StopFailure", "SessionEnd"}


def _kept(payload):
    return {key: payload[key] for key in KEPT_FIELDS if key in payload and isinstance(payload[key], str | bool)}


def _require_object(payload):
    if not isinstance(payload, dict):
        raise ReportError("the report must be a JSON object")


def _resumes_at(payload, now):
    """A reset time the report may carry (epoch seconds in `resetsAt` / `resets_at`), else None."""
    for key in ("resetsAt", "resets_at"):
        value = payload.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            try:
                at = datetime.fromtimestamp(value, UTC)
            except (OverflowError, OSError, ValueError):
                continue
            if now - timedelta(days=1) < at < now + timedelta(days=31):
                return at
    return None


def claude_hook(payload, now):
    """A Claude Code hook input (its `type: "http"` hooks POST it as is)."""
    _require_object(payload)
    event = payload.get("hook_event_name")
    if not isinstance(event, str) or not event:
        raise ReportError("a Claude Code hook input needs hook_event_name")
    observed = _kept(payload)
    if event == "Notification":
        kind = payload.get("notification_type")
        return Signal(event, NOTIFICATION_REASONS.get(kind), observed=observed)
    if event == "PermissionRequest":
        return Signal(event, liveness.PERMISSION_PROMPT, observed=observed)
    if event == "Elicitation":
        return Signal(event, liveness.ELICITATION, observed=observed)
    if event == "StopFailure":
        if payload.get("error") == "rate_limit":
            return Signal(event, liveness.USAGE_LIMIT, True, _resumes_at(payload, now), observed)
        return Signal(event, None, True, observed=observed)
    if event == "SessionEnd":
        return Signal(event, None, True, observed=observed)
    if event in WORKING_EVENTS:
        return Signal(event, liveness.WORKING, event in ENDING_EVENTS, observed=observed)
    return Signal(event, None, observed=observed)


def codex_report(payload, now):
    """Codex's `notify` JSON (after each turn) or a Codex command-hook input."""
    _require_object(payload)
    if "hook_event_name" in payload:
        return claude_hook(payload, now)
    kind = payload.get("type")
    if kind == "agent-turn-complete":
        return Signal(kind, liveness.WORKING, observed=_kept(payload))
    if not isinstance(kind, str) or not kind:
        raise ReportError('a Codex report needs "type" (notify) or "hook_event_name" (hooks)')
    return Signal(kind, None, observed=_kept(payload))
