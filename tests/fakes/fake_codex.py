#!/usr/bin/env python3
"""A stand-in for `codex` that prints the documented `codex exec --json` event shapes.

Sign-in mode: the file `auth_mode` beside this file holds chatgpt (default), apikey or none.
Models: under ChatGPT sign-in, codex-mini-latest, gpt-5.3-codex and o4-mini are rejected with the
documented 400 message; gpt-hang sleeps; gpt-limit hits the usage limit ("… try again at 6:39 AM.",
except for a smoke test's prompt or when a file `limit_cleared` is beside this file); anything else
completes with "DONE — implemented".
Every call is appended to calls.jsonl beside this file (argv and stdin, exact). With
`-c notify=[…]` it runs that program after the turn with the notify JSON as its last argument.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
args = sys.argv[1:]
if args == ["--version"]:
    print("codex-cli 0.169.0")
    sys.exit(0)
mode_file = HERE / "auth_mode"
mode = mode_file.read_text().strip() if mode_file.exists() else "chatgpt"
if args[:2] == ["login", "status"]:
    if mode == "chatgpt":
        print("Logged in using ChatGPT", file=sys.stderr)
    elif mode == "apikey":
        # 0.169 wording (the older "Logged in using an API key - …" no longer exists).
        print("API key configured - sk-proj-***ABCDE", file=sys.stderr)
        print("Authentication is checked when you send a request.", file=sys.stderr)
    else:
        print("Not logged in", file=sys.stderr)
        sys.exit(1)
    sys.exit(0)
if args[:1] != ["exec"]:
    print(f"error: unexpected argument '{args[0] if args else ''}'", file=sys.stderr)
    sys.exit(2)

stdin = sys.stdin.buffer.read() if not sys.stdin.isatty() else b""
with open(HERE / "calls.jsonl", "a") as calls:
    calls.write(json.dumps({"argv": sys.argv, "stdin": stdin.decode("utf-8", "surrogateescape")}) + "\n")


def emit(obj):
    print(json.dumps(obj), flush=True)


model = args[args.index("-m") + 1] if "-m" in args else "gpt-5.5"
if mode == "none":
    print("Not logged in", file=sys.stderr)
    sys.exit(1)
# `exec … resume <thread_id> -` continues that thread, as the real CLI does.
thread = args[args.index("resume") + 1] if "resume" in args else "019a6c1e-th-1"
emit({"type": "thread.started", "thread_id": thread})
emit({"type": "turn.started"})
if model == "gpt-hang":
    time.sleep(600)
if mode == "chatgpt" and model in ("codex-mini-latest", "gpt-5.3-codex", "o4-mini"):
    message = f"The '{model}' model is not supported when using Codex with a ChatGPT account."
    body = {"type": "error", "status": 400, "error": {"type": "invalid_request_error", "message": message}}
    emit({"type": "error", "message": json.dumps(body)})
    emit({"type": "turn.failed", "error": {"message": json.dumps(body)}})
    sys.exit(1)
SMOKE = stdin.strip() == b"Reply with the single word OK."
if model == "gpt-limit" and not SMOKE and not (HERE / "limit_cleared").exists():
    message = (
        "You’ve hit your usage limit. Upgrade to Pro (https://chatgpt.com/explore/pro), visit "
        "https://chatgpt.com/codex/settings/usage to purchase more credits or try again at 6:39 AM."
    )
    emit({"type": "error", "message": message})
    emit({"type": "turn.failed", "error": {"message": message}})
    sys.exit(1)
emit({"type": "item.completed", "item": {"id": "item_0", "type": "agent_message", "text": "DONE — implemented"}})
usage = {"input_tokens": 1_200_000, "cached_input_tokens": 1_000_000, "cache_write_input_tokens": 0,
         "output_tokens": 100_000, "reasoning_output_tokens": 40_000}  # fmt: skip
emit({"type": "turn.completed", "usage": usage})
# `-c notify=[…]`: after each turn Codex runs that program with the notify JSON as one more argument.
for flag, value in zip(args, args[1:], strict=False):
    if flag == "-c" and value.startswith("notify="):
        notice = {"type": "agent-turn-complete", "thread-id": thread, "turn-id": "1", "cwd": str(Path.cwd()),
                  "client": "codex_exec", "input-messages": [stdin.decode(errors="replace")],
                  "last-assistant-message": "DONE — implemented"}  # fmt: skip
        subprocess.run([*json.loads(value.removeprefix("notify=")), json.dumps(notice)], check=False, timeout=30)
sys.exit(0)
