#!/usr/bin/env python3
"""A stand-in for `claude` that prints the documented print-mode output shapes.

The behaviour is chosen by the model name (so it works under tmux, whatever the environment):
  claude-hang           sleeps (smoke timeout)
  claude-bad-model      API error for an unknown model (success + is_error, terminal_reason api_error)
  claude-not-logged-in  "Not logged in · Please run /login", as the real CLI prints it unauthenticated
  claude-max-turns      error_max_turns after some work
  claude-*-crash        starts streaming, then dies by SIGKILL with no result
  claude-cost-X.YZ      success costing X.YZ USD (total_cost_usd)
  claude-asks-permission  with hooks (a worker, not a smoke test): shows a permission prompt and waits
  claude-session-limit  stream-json: a rejected rate_limit_event (resetsAt RESETS_AT) then the result
                        "You've hit your session limit · resets 3pm", exit 1
  claude-weekly-limit   the result "You've hit your weekly limit · resets Dec 1, 9am" only, exit 1
  (a smoke test's prompt is never limited; a file `limit_cleared` beside this file makes the *-limit
  models succeed: the limit has reset; a file `resets_at` holds the resetsAt epoch to print)
  anything else         success, with the final text from FAKE_RESULT or "DONE — patch written"
Every call is appended to calls.jsonl beside this file (argv and stdin, exact). With
`--settings FILE`, its hooks fire as Claude fires them: `http` hooks POST the hook input JSON,
`command` hooks get it on stdin (a *-limit model fires StopFailure with error rate_limit).
"""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

args = sys.argv[1:]
if args == ["--version"]:
    print("2.1.240 (Claude Code)")
    sys.exit(0)

stdin = sys.stdin.buffer.read() if not sys.stdin.isatty() else b""
with open(Path(__file__).with_name("calls.jsonl"), "a") as calls:
    calls.write(json.dumps({"argv": sys.argv, "stdin": stdin.decode("utf-8", "surrogateescape")}) + "\n")

model = args[args.index("--model") + 1] if "--model" in args else "default"
# A resumed run keeps its session id, as the real CLI does.
SESSION = args[args.index("--resume") + 1] if "--resume" in args else "0b7f3a52-sess-1"
stream = "stream-json" in args
if stream and "--verbose" not in args:
    print("Error: When using --print, --output-format=stream-json requires --verbose", file=sys.stderr)
    sys.exit(1)


def emit(obj):
    print(json.dumps(obj), flush=True)


def result(subtype, is_error, text=None, **extra):
    obj = {
        "type": "result",
        "subtype": subtype,
        "is_error": is_error,
        "duration_ms": 1200,
        "duration_api_ms": 900,
        "num_turns": extra.pop("num_turns", 3),
        "session_id": SESSION,
        "total_cost_usd": float(model.removeprefix("claude-cost-")) if model.startswith("claude-cost-") else 0.0123,
        "usage": {
            "input_tokens": 10,
            "cache_creation_input_tokens": 5,
            "cache_read_input_tokens": 400,
            "output_tokens": 20,
            "service_tier": "standard",
        },
        "stop_reason": "end_turn",
        **extra,
    }
    if text is not None:
        obj["result"] = text
    emit(obj)


HOOKS = json.loads(Path(args[args.index("--settings") + 1]).read_text()) if "--settings" in args else {}


def fire(event, **fields):
    """Run the settings' hooks for `event` with the hook input Claude sends."""
    payload = {"session_id": SESSION, "transcript_path": f"/tmp/{SESSION}.jsonl", "cwd": os.getcwd(),
               "hook_event_name": event, "permission_mode": "default", **fields}  # fmt: skip
    body = json.dumps(payload).encode()
    for entry in HOOKS.get("hooks", {}).get(event, []):
        for hook in entry["hooks"]:
            try:
                if hook["type"] == "http":
                    request = urllib.request.Request(hook["url"], data=body, headers=hook.get("headers", {}))
                    request.add_header("Content-Type", "application/json")
                    urllib.request.urlopen(request, timeout=hook.get("timeout", 30)).close()
                elif hook["type"] == "command":
                    subprocess.run(
                        shlex.split(hook["command"]), input=body, timeout=hook.get("timeout", 60), check=False
                    )
            except OSError as error:  # a failing hook never stops Claude
                print(f"hook {event} failed: {error}", file=sys.stderr)


def init():
    emit({"type": "system", "subtype": "init", "session_id": SESSION, "model": model, "apiKeySource": "none",
          "claude_code_version": "2.1.240", "tools": [], "cwd": os.getcwd()})  # fmt: skip


fire("UserPromptSubmit", prompt=stdin.decode("utf-8", "replace"))
HERE = Path(__file__).parent
RESETS_AT = int((HERE / "resets_at").read_text()) if (HERE / "resets_at").exists() else 1795705200  # 15:00 UTC
SMOKE = stdin.strip() == b"Reply with the single word OK."
if model.endswith("-limit") and not SMOKE and not (HERE / "limit_cleared").exists():
    if stream:
        info = {"status": "rejected", "resetsAt": RESETS_AT, "rateLimitType": "five_hour", "utilization": 1.0}
        if model == "claude-session-limit":
            emit({"type": "rate_limit_event", "rate_limit_info": info, "session_id": SESSION})
        emit({"type": "assistant", "message": {"content": [{"type": "text", "text": "limit"}]}, "error": "rate_limit"})
    fire("StopFailure", error="rate_limit", last_assistant_message="")
    fire("SessionEnd", reason="other")
    which = "session" if model == "claude-session-limit" else "weekly"
    reset = "3pm" if which == "session" else "Dec 1, 9am"
    result("success", True, f"You've hit your {which} limit · resets {reset}", terminal_reason="completed",
           num_turns=2)  # fmt: skip
    sys.exit(1)
if model == "claude-not-logged-in":
    # The real unauthenticated run (CLI 2.1.197): init, a synthetic assistant error, one result
    # with terminal_reason "completed" and num_turns 1; StopFailure fires, Stop does not.
    NOT_LOGGED_IN = "Not logged in · Please run /login"
    if stream:
        init()
        emit({"type": "assistant", "message": {"model": "<synthetic>", "role": "assistant",
              "content": [{"type": "text", "text": NOT_LOGGED_IN}]}, "session_id": SESSION,
              "error": "authentication_failed"})  # fmt: skip
    fire("StopFailure", error="authentication_failed", last_assistant_message=NOT_LOGGED_IN)
    fire("SessionEnd", reason="other")
    result("success", True, NOT_LOGGED_IN, terminal_reason="completed", num_turns=1, api_error_status=None,
           total_cost_usd=0)  # fmt: skip
    sys.exit(1)
if model == "claude-hang":
    time.sleep(600)
if model == "claude-asks-permission" and HOOKS:
    fire("PermissionRequest", tool_name="Bash", tool_input={"command": "rm -rf build"})
    fire("Notification", message="Claude needs your permission to use Bash", notification_type="permission_prompt")
    time.sleep(600)
fire("PreToolUse", tool_name="Bash", tool_input={"command": "make test"})
if stream:
    init()
    emit({"type": "assistant", "message": {"role": "assistant", "content": [{"type": "text", "text": "Working…"}]}})
if model.endswith("-crash"):
    os.kill(os.getpid(), signal.SIGKILL)
if model == "claude-bad-model":
    result(
        "success",
        True,
        'API Error: 404 {"type":"error","error":{"type":"not_found_error","message":"model: ' + model + '"}}',
        terminal_reason="api_error",
        api_error_status=404,
        num_turns=0,
    )
    sys.exit(1)
if model == "claude-max-turns":
    result("error_max_turns", True, errors=["Reached maximum number of turns (2)"], terminal_reason="max_turns")
    sys.exit(1)
fire("Stop", stop_hook_active=False, last_assistant_message="DONE — patch written")
fire("SessionEnd", reason="other")
result("success", False, os.environ.get("FAKE_RESULT", "DONE — patch written"), terminal_reason="completed")
sys.exit(0)
