"""Wire a launched worker to report itself: a token scoped to its one runtime, and the CLI's own
reporting switched on (Claude Code hooks through `--settings`, Codex `notify` through `-c`).

Claude `http` hooks POST the hook input straight to the API with the token in a header; Claude
allows them only to loopback or public addresses, so for a URL on a private network the hooks are
`command` hooks running runtimes/intake/reporter.py (stdlib only) instead. Codex has no http hooks:
its `notify` program is the reporter. The token is written once, to files readable by this user
only in the run directory; the database keeps only its hash.
"""

import ipaddress
import json
import os
import shlex
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from django.conf import settings

from runtimes.intake import reporter, tokens
from runtimes.models import ApiToken, Provider

# The Claude Code hook events a worker reports (section 6.3 of the CLI facts).
CLAUDE_HOOK_EVENTS = (
    "Notification", "PermissionRequest", "UserPromptSubmit", "PreToolUse", "Stop", "StopFailure", "SessionEnd",
)  # fmt: skip
# Where Claude refuses http hooks: private, shared and link-local networks (loopback is allowed).
BLOCKED_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16", "fc00::/7",
              "fe80::/10")
)  # fmt: skip
HOOK_TIMEOUT = 5  # seconds Claude waits for a hook
REPORTER = Path(reporter.__file__).resolve()


def _blocked(address):
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return True
    return not ip.is_loopback and any(ip in network for network in BLOCKED_NETWORKS)


def http_hooks_allowed(url, resolve=socket.getaddrinfo):
    """Whether Claude Code would POST http hooks to `url`: its host is loopback or public."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host:
        return False
    if host == "localhost":
        return True
    try:
        return not _blocked(str(ipaddress.ip_address(host)))
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in resolve(host, parts.port or 80, proto=socket.IPPROTO_TCP)}
    except OSError:
        return False  # unresolvable here: the command reporter will say why when it runs
    return bool(addresses) and not any(_blocked(a) for a in addresses)


def endpoint(runtime, kind):
    return f"{settings.CONTROLROOM['URL']}/api/v1/runtimes/{runtime.pk}/{kind}"


def reporter_argv(url, token_file, kind):
    return [sys.executable, str(REPORTER), "--url", url, "--token-file", str(token_file), kind]


def claude_settings(url, token, token_file, http):
    """The `--settings` JSON: every reported event goes to `url`, by http or through the reporter."""
    if http:
        hook = {"type": "http", "url": url, "headers": {"Authorization": f"Bearer {token}"}, "timeout": HOOK_TIMEOUT}
    else:
        command = shlex.join(reporter_argv(url, token_file, "claude-hook"))
        hook = {"type": "command", "command": command, "timeout": HOOK_TIMEOUT * 2}
    return {"hooks": {event: [{"hooks": [hook]}] for event in CLAUDE_HOOK_EVENTS}}


def _write_private(path, text):
    """Create `path` readable by this user only (0600), failing if it exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


@dataclass
class Wiring:
    token: ApiToken
    cli_args: list  # what the CLI's argv gains (before its trailing "-" for Codex)
    transport: str  # "http" | "command" | "notify"


def wire(runtime, run_dir, provider):
    """Mint the runtime's token and write its reporting files into run_dir; return the CLI args.
    Raises OSError when the files cannot be written (the caller rolls back)."""
    row, token = tokens.mint(f"worker {runtime.handle}", role=ApiToken.Role.REPORTER, runtime=runtime)
    token_file = Path(run_dir) / "api-token"
    _write_private(token_file, token + "\n")
    if provider == Provider.CODEX:
        notify = reporter_argv(endpoint(runtime, "codex-notify"), token_file, "codex-notify")
        # A TOML array of basic strings: JSON's string escapes are valid TOML.
        return Wiring(row, ["-c", f"notify={json.dumps(notify)}"], "notify")
    url = endpoint(runtime, "claude-hook")
    http = http_hooks_allowed(url)
    settings_path = Path(run_dir) / "claude-settings.json"
    _write_private(settings_path, json.dumps(claude_settings(url, token, token_file, http), indent=2))
    return Wiring(row, ["--settings", str(settings_path)], "http" if http else "command")
