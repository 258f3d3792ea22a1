#!/usr/bin/env python3
"""Post one worker report to Control Room. Standard library only (no Django): it runs beside the
worker, as a Claude Code `command` hook (the hook input JSON on stdin) or as Codex's `notify`
program (the notify JSON as the last argument).

    reporter.py --url URL --token-file FILE claude-hook          < hook-input.json
    reporter.py --url URL --token-file FILE codex-notify '{"type": "agent-turn-complete", …}'

The token is read from a file (0600, in the run directory), never from argv, so `ps` does not show
it. The reporter never fails the worker: whatever happens it exits 0 after at most --timeout
seconds, and says what went wrong on stderr (without the token).
"""

import argparse
import json
import sys
import urllib.error
import urllib.request

MAX_BODY = 1024 * 1024  # the API's default CONTROLROOM_API_MAX_BODY


def read_payload(kind, argument, stdin):
    """The report's JSON text: the last argument (codex-notify) or stdin, read bounded."""
    text = argument if kind == "codex-notify" and argument is not None else stdin.read(MAX_BODY + 1)
    if len(text.encode("utf-8", errors="replace")) > MAX_BODY:
        raise ValueError(f"the report is over {MAX_BODY} bytes")
    json.loads(text)  # refuse to send what the API would refuse
    return text.encode("utf-8")


def post(url, token, body, timeout):
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an http(s) URL: {url}")
    request = urllib.request.Request(url, data=body, method="POST")  # noqa: S310 (scheme checked above)
    request.add_header("Content-Type", "application/json")
    request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        return response.status


def main(argv=None, stdin=None):
    parser = argparse.ArgumentParser(description="Post one worker report to Control Room.")
    parser.add_argument("--url", required=True, help="The endpoint, e.g. …/api/v1/runtimes/17/claude-hook.")
    parser.add_argument("--token-file", required=True, help="File holding the runtime's API token.")
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("kind", choices=("claude-hook", "codex-notify"))
    parser.add_argument("payload", nargs="?", help="The notify JSON (codex-notify); else stdin is read.")
    args = parser.parse_args(argv)
    try:
        with open(args.token_file, encoding="utf-8") as handle:
            token = handle.read(512).strip()
        body = read_payload(args.kind, args.payload, stdin or sys.stdin)
        post(args.url, token, body, args.timeout)
    except urllib.error.HTTPError as error:
        print(f"control room reporter: {args.url} answered {error.code}", file=sys.stderr)
    except (OSError, ValueError) as error:
        print(f"control room reporter: {type(error).__name__}: {error}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
