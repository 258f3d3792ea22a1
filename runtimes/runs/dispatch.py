"""Launching workers: exact-model smoke tests, then a tmux session started from an argv list.

There is no default model anywhere: a profile names its exact model, the smoke test runs that
model, and a launch whose smoke test fails stops before any tmux session exists.
"""

import contextlib
import fnmatch
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import DatabaseError, transaction
from django.utils import timezone

from runtimes.files import FileTooLarge, read_bounded
from runtimes.intake import wiring
from runtimes.models import (
    LivenessEvent,
    ModelSmokeResult,
    Provider,
    Reason,
    Runtime,
    RuntimeClass,
    WorkerProfile,
    validate_extra_args,
    validate_model_name,
)
from runtimes.probes import processes as process_probe
from runtimes.probes import tmux as tmux_probe
from runtimes.runs import budgets, exec_worker, outcomes
from runtimes.runs.controller import session_name_for
from runtimes.text import safe_text
from runtimes.watch.announce import announce_on_commit
from tickets.models import Ticket, validate_ticket_key

SMOKE_PROMPT = "Reply with the single word OK."
R = ModelSmokeResult.Reason


class DispatchError(Exception):
    """A launch or smoke test refused; the message says why and what to do."""


def cli_bin(provider):
    return settings.CONTROLROOM["CLAUDE_BIN" if provider == Provider.CLAUDE else "CODEX_BIN"]


@dataclass
class CliRun:
    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool = False


def run_cli(argv, stdin="", timeout=None):
    """Run a CLI non-interactively (argv list, never a shell). FileNotFoundError means missing."""
    try:
        done = subprocess.run(
            argv, input=stdin, capture_output=True, text=True, errors="replace", timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as expired:
        out = expired.stdout.decode(errors="replace") if isinstance(expired.stdout, bytes) else expired.stdout or ""
        return CliRun(None, out, "", timed_out=True)
    return CliRun(done.returncode, done.stdout, done.stderr)


def codex_auth_mode(binary, timeout):
    """`codex login status` prints its answer on stderr: chatgpt, apikey or "" (not logged in).
    An API-key sign-in reads "API key configured - sk-…" (0.169) or "Logged in using an API key -
    sk-…" (before); only the mode is kept, never the masked key."""
    status = run_cli([binary, "login", "status"], timeout=timeout)
    text = f"{status.stderr}\n{status.stdout}"
    if "Logged in using ChatGPT" in text:
        return "chatgpt"
    if "API key configured" in text or "Logged in using an API key" in text:
        return "apikey"
    return ""


def unsupported_under_chatgpt(model):
    return any(fnmatch.fnmatchcase(model, pattern) for pattern in settings.CONTROLROOM["CODEX_CHATGPT_UNSUPPORTED"])


def smoke_argv(provider, binary, model):
    if provider == Provider.CODEX:
        return [binary, "exec", "--json", "--skip-git-repo-check", "-m", model, "-"]
    return [binary, "-p", "--output-format", "json", "--model", model, "--max-turns", "1"]


def _smoke(provider, model):
    """Run the smoke test; return (reason, message, auth_mode, cli_version)."""
    binary = cli_bin(provider)
    timeout = settings.CONTROLROOM["SMOKE_TIMEOUT"]
    if shutil.which(binary) is None:
        return R.CLI_MISSING, f"{provider} CLI not found: {binary} (set CONTROLROOM_{provider.upper()}_BIN)", "", ""
    version = run_cli([binary, "--version"], timeout=timeout)
    cli_version = (version.stdout or version.stderr).strip().splitlines()[0][:100] if not version.timed_out else ""
    auth_mode = ""
    if provider == Provider.CODEX:
        auth_mode = codex_auth_mode(binary, timeout)
        if not auth_mode:
            return R.AUTH_MISSING, "codex is not logged in: run `codex login` on this host", "", cli_version
        if auth_mode == "chatgpt" and unsupported_under_chatgpt(model):
            working = ", ".join(settings.CONTROLROOM["CODEX_CHATGPT_SUGGESTED"])
            message = f"{model} is not supported when using Codex with a ChatGPT account; use one of: {working}"
            return R.UNSUPPORTED_MODEL, message, auth_mode, cli_version
    run = run_cli(smoke_argv(provider, binary, model), stdin=SMOKE_PROMPT, timeout=timeout)
    if run.timed_out:
        return R.TIMEOUT, f"no answer from {model} within {timeout:g}s", auth_mode, cli_version
    outcome = outcomes.classify(provider, run.stdout)
    if provider == Provider.CLAUDE and not auth_mode:
        auth_mode = _claude_auth_source(run.stdout)
    if outcome.exit_outcome in (outcomes.COMPLETED, outcomes.PARTIAL_USEFUL):
        return R.OK, f"{model} answered", auth_mode, cli_version
    reason = {"unsupported-model": R.UNSUPPORTED_MODEL, "auth-error": R.AUTH_MISSING}.get(outcome.reason, R.ERROR)
    detail = outcome.message if outcome.reason != "unparseable-output" else f"{outcome.message}; stderr: {run.stderr}"
    return reason, f"{outcome.reason}: {detail}", auth_mode, cli_version


def _claude_auth_source(output):
    for obj in outcomes.json_objects(output):
        if obj.get("type") == "system" and isinstance(obj.get("apiKeySource"), str):
            return obj["apiKeySource"]
    return ""


def smoke_test(provider, model):
    """Run the exact model once and record the result (returned)."""
    if provider not in WorkerProfile.LAUNCHABLE_PROVIDERS:
        raise DispatchError(f"Unknown provider {provider!r}: use claude or codex.")
    try:
        validate_model_name(model)
    except ValidationError:
        raise DispatchError(f"Invalid model name {model!r}: give the exact model, e.g. gpt-5.5.") from None
    started = time.monotonic()
    reason, message, auth_mode, version = _smoke(provider, model)
    return ModelSmokeResult.objects.create(
        provider=provider,
        model=model,
        auth_mode=auth_mode,
        cli_version=version,
        ok=reason == R.OK,
        reason=reason,
        message=safe_text(message, settings.CONTROLROOM["MAX_MESSAGE_CHARS"]),
        duration_ms=int((time.monotonic() - started) * 1000),
        host=settings.CONTROLROOM_HOST,
    )


def recent_passing_smoke(provider, model, now):
    cutoff = now - timedelta(seconds=settings.CONTROLROOM["SMOKE_TTL"])
    latest = ModelSmokeResult.objects.filter(provider=provider, model=model, host=settings.CONTROLROOM_HOST).first()
    return latest if latest and latest.ok and latest.checked_at >= cutoff else None


def check_profile_argv(profile):
    """The profile's model and extra arguments as the admin form checks them, enforced at launch
    (a profile written around the form cannot slip a second model or output format past the smoke test)."""
    try:
        validate_model_name(profile.model)
        validate_extra_args(profile.provider, profile.extra_args)
    except ValidationError as error:
        raise DispatchError(f"Worker profile {profile.name}: {' '.join(error.messages)}") from None


def worker_argv(profile, reporting_args=(), resume_session_id=""):
    """The CLI's argv for a profile: machine-readable output, the exact model, the profile's flags,
    and the switches that make the worker report itself (runtimes.intake.wiring); with
    `resume_session_id`, the CLI's resume form (Claude `--resume <session_id>`, Codex
    `exec … resume <thread_id> -`), the prompt still on standard input."""
    check_profile_argv(profile)
    binary = cli_bin(profile.provider)
    if profile.provider == Provider.CODEX:
        argv = [binary, "exec", "--json", "--skip-git-repo-check", "-m", profile.model]
        if profile.effort:
            argv += ["-c", f"model_reasoning_effort={profile.effort}"]
        resume = ["resume", resume_session_id] if resume_session_id else []
        return [*argv, *reporting_args, *profile.extra_args, *resume, "-"]
    argv = [binary, "-p", "--output-format", "stream-json", "--verbose", "--model", profile.model]
    if profile.max_turns:
        argv += ["--max-turns", str(profile.max_turns)]
    if profile.max_budget_usd:
        argv += ["--max-budget-usd", str(profile.max_budget_usd)]
    if resume_session_id:
        argv += ["--resume", resume_session_id]
    return [*argv, *reporting_args, *profile.extra_args]


@dataclass
class LaunchRequest:
    ticket_key: str
    profile_name: str
    cwd: str
    prompt_file: str
    tmux_socket: str = ""
    prompt: bytes | None = None  # given instead of prompt_file (a resume's short prompt)
    resumed_from: Runtime | None = None  # the usage-limited run this launch resumes

    def resolve(self):
        """Check everything an operator can get wrong, before anything runs."""
        ticket = Ticket.objects.filter(key=self.ticket_key).first()
        if ticket is None:
            raise DispatchError(f"No ticket {self.ticket_key!r}: check the key (like MC-4502).")
        if ticket.is_closed:
            raise DispatchError(f"Ticket {ticket.key} is {ticket.state}: reopen it before launching a worker.")
        profile = WorkerProfile.objects.filter(name=self.profile_name).first()
        if profile is None:
            names = ", ".join(WorkerProfile.objects.filter(enabled=True).values_list("name", flat=True)) or "none yet"
            raise DispatchError(f"No worker profile {self.profile_name!r}; enabled profiles: {names}.")
        if not profile.enabled:
            raise DispatchError(f"Worker profile {profile.name} is disabled: enable it in the admin first.")
        check_profile_argv(profile)
        try:
            # A key stored before keys were checked in full (e.g. with a trailing newline) would
            # name a tmux session that cannot be found again to clean it up.
            validate_ticket_key(ticket.key)
        except ValidationError:
            raise DispatchError(f"Ticket key {ticket.key!r} is not a valid key (like MC-4502): fix it first.") from None
        if not Path(self.cwd).is_dir():
            raise DispatchError(f"--cwd {self.cwd} is not a directory.")
        try:
            prompt = (
                self.prompt
                if self.prompt is not None
                else read_bounded(self.prompt_file, settings.CONTROLROOM["MAX_PROMPT_BYTES"])
            )
        except FileTooLarge as error:
            raise DispatchError(
                f"--prompt-file {self.prompt_file} is too large: {error.strerror} (CONTROLROOM_MAX_PROMPT_BYTES)."
            ) from None
        except OSError as error:
            raise DispatchError(f"Cannot read --prompt-file {self.prompt_file}: {error.strerror}.") from None
        if not prompt.strip():
            raise DispatchError(f"--prompt-file {self.prompt_file} is empty.")
        return ticket, profile, prompt


def launch(request, now=None):
    """Smoke-test (or reuse a recent pass), then start the worker in tmux and record it pending.

    Raises DispatchError, with the smoke result recorded and a note on the ticket, before any
    tmux session exists when the model does not work."""
    now = now or timezone.now()
    ticket, profile, prompt = request.resolve()
    resumed = request.resumed_from
    try:
        budgets.check_launch(ticket, profile, now)
    except budgets.BudgetReached as reached:
        raise DispatchError(f"Refused to launch {profile.name} on {ticket.key}: {reached}.") from None
    smoke = recent_passing_smoke(profile.provider, profile.model, now) or smoke_test(profile.provider, profile.model)
    if not smoke.ok:
        note = f"launch refused: {profile.provider} {profile.model}: {smoke.reason} — {smoke.message}"
        Ticket.objects.filter(pk=ticket.pk).update(note=safe_text(note, 1000), updated_at=now)
        raise DispatchError(f"Refused to launch {profile.name} on {ticket.key}: {smoke.reason}: {smoke.message}")

    session = session_name_for(ticket.key, secrets.token_hex(3))
    run_dir = Path(settings.CONTROLROOM["RUN_DIR"]) / session
    prompt_path, output_path = run_dir / "prompt.txt", run_dir / "output.jsonl"
    try:
        run_dir.mkdir(parents=True, mode=0o700)
        prompt_path.write_bytes(prompt)
    except OSError as error:
        raise DispatchError(
            f"Cannot write the worker's files under CONTROLROOM_RUN_DIR ({run_dir}): {error.strerror}."
        ) from None
    notify = settings.CONTROLROOM["WATCH_SOCKET"]
    wrapper = [sys.executable, str(Path(exec_worker.__file__).resolve()), "--stdin", str(prompt_path), "--stdout",
               str(output_path), *(["--notify", notify] if notify else []), "--"]  # fmt: skip
    session_started = False
    mark = secrets.token_hex(16)  # marks the tmux session as ours (stops check it)
    try:
        # One transaction: the row (its id is in the hooks' URL), its token and the launch event
        # are recorded together with the session, or not at all.
        with transaction.atomic():
            runtime = Runtime.objects.create(
                ticket=ticket,
                kind=Runtime.Kind.TMUX,
                handle=f"tmux:{session}",
                host=settings.CONTROLROOM_HOST,
                tmux_socket=request.tmux_socket,
                tmux_target=session,
                launch_token=mark,
                provider=profile.provider,
                model=profile.model,
                profile=profile.name,
                cwd=str(Path(request.cwd).resolve()),
                output_path=str(output_path),
                started_at=now,
                class_changed_at=now,
                class_reason=Reason.LAUNCHED,
                class_message=f"launched {profile.model} in tmux session {session}"
                + (f", resuming {resumed.handle}" if resumed else ""),
                resumed_from=resumed,
                resume_count=resumed.resume_count + 1 if resumed else 0,
                agent_session_id=resumed.agent_session_id if resumed else "",
            )
            try:
                reporting = wiring.wire(runtime, run_dir, profile.provider)
            except OSError as error:
                message = f"Cannot write the worker's reporting files in {run_dir}: {error.strerror}."
                raise DispatchError(message) from None
            resume_id = resumed.agent_session_id if resumed else ""
            command = [*wrapper, *worker_argv(profile, reporting.cli_args, resume_id)]
            pane_pid = start_tmux_session(request.tmux_socket, session, request.cwd, command, mark=mark)
            session_started = True
            runtime.pid = pane_pid
            runtime.pid_create_time = process_probe.create_time_of(pane_pid) if pane_pid else None
            runtime.save(update_fields=["pid", "pid_create_time"])
            LivenessEvent.objects.create(
                runtime=runtime, at=now, from_class="", to_class=RuntimeClass.PENDING, reason=Reason.LAUNCHED,
                message=runtime.class_message, source=LivenessEvent.Source.LAUNCH, host=runtime.host,
                observed={"pane_pid": pane_pid, "smoke_result": smoke.pk, "argv0": command[0],
                          "reports": reporting.transport},
            )  # fmt: skip
            announce_on_commit(runtime)  # the watcher holds its pane's pid at once
    except Exception as error:
        if session_started:
            _kill_session_quietly(request.tmux_socket, session)
        shutil.rmtree(run_dir, ignore_errors=True)
        if isinstance(error, DatabaseError):
            stopped = "the tmux session was stopped and " if session_started else ""
            raise DispatchError(f"Could not record the launch ({error}); {stopped}nothing was recorded.") from error
        raise
    return runtime


def _tmux(socket, *args):
    try:
        done = tmux_probe.run(socket, *args)
    except tmux_probe.TmuxError as error:
        raise DispatchError(str(error)) from None
    if done.returncode != 0:
        raise DispatchError(f"tmux {args[0]} failed: {done.stderr.strip()}")
    return done.stdout


def start_tmux_session(socket, session, cwd, command, mark):
    """Start `command` (an argv list, never a shell string) in a new detached session with
    remain-on-exit on; return the pane's pid. The session starts idle, gets remain-on-exit and
    Control Room's mark (the launch token, which a stop checks before killing the session),
    then respawns into the command, so even an instant exit leaves a dead pane to read."""
    if len(command) < 2:
        raise DispatchError("refusing a one-word command: tmux would hand it to a shell")
    _tmux(socket, "new-session", "-d", "-s", session, "-c", cwd, "-x", "200", "-y", "50", "sleep", "600")
    try:
        _tmux(socket, "set-option", "-t", f"={session}:", tmux_probe.MARK_OPTION, mark)
        _tmux(socket, "set-option", "-w", "-t", session, "remain-on-exit", "on")
        _tmux(socket, "respawn-pane", "-k", "-t", session, "-c", cwd, "--", *command)
        pid = _tmux(socket, "display-message", "-p", "-t", session, "#{pane_pid}").strip()
    except DispatchError:
        _kill_session_quietly(socket, session)
        raise
    return int(pid) if pid.isdigit() else None


def _kill_session_quietly(socket, session):
    with contextlib.suppress(tmux_probe.TmuxError):
        tmux_probe.kill_session(socket, session)
