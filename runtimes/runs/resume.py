"""Resume a usage-limited run: relaunch its profile in its cwd with the CLI's resume form.

A run paused by a usage limit keeps its Claude session_id / Codex thread_id. Resuming it starts a
new runtime (after the usual smoke test) that continues that session with a short prompt, linked
to the paused one by `resumed_from`; the paused one settles as `resumed`, its ledger row saying by
whom. The auto-resume (CONTROLROOM_AUTO_RESUME or a profile's switch) is a django-q2 schedule at
`resumes_at` plus a spread and a jitter, run once by the worker host's cluster; after
CONTROLROOM_MAX_RESUMES resumes a run that hits its limit again waits for a person.
"""

import contextlib
import logging
import random
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django_q.models import Schedule

from runtimes import ledger
from runtimes.models import LivenessEvent, Provider, Reason, Runtime, RuntimeClass, WorkerProfile
from runtimes.observe import observe_one
from runtimes.probes import tmux as tmux_probe
from runtimes.runs.dispatch import DispatchError, LaunchRequest, launch
from runtimes.text import safe_text
from tickets.models import Ticket

logger = logging.getLogger(__name__)

AUTO_RESUME_TASK = "runtimes.tasks.auto_resume"
AUTO_RESUMER = "auto-resume"
# Runs of one profile on one host whose limits reset within this window share the spread.
SAME_RESET = timedelta(minutes=10)


class ResumeError(Exception):
    """The run cannot be resumed now; the message says why and what to do."""


def schedule_name(runtime_id):
    return f"auto-resume:{runtime_id}"


def check_resumable(runtime):
    """Refuse what cannot be resumed, before anything starts. Observes a tmux worker once."""
    if runtime.runtime_class == RuntimeClass.RESUMED:
        successor = Runtime.objects.filter(resumed_from=runtime).values_list("handle", flat=True).first()
        raise ResumeError(f"{runtime.handle} was already resumed as {successor or 'another run'}.")
    if runtime.runtime_class != RuntimeClass.USAGE_LIMITED:
        raise ResumeError(f"{runtime.handle} is {runtime.runtime_class}: only a usage-limited run is resumed.")
    if runtime.provider not in (Provider.CLAUDE, Provider.CODEX) or not runtime.profile:
        raise ResumeError(f"{runtime.handle} was not launched from a worker profile: launch a new worker instead.")
    if not runtime.agent_session_id:
        raise ResumeError(f"{runtime.handle} has no session id in its output: launch a new worker instead.")
    if runtime.host != settings.CONTROLROOM_HOST:
        raise ResumeError(f"{runtime.handle} ran on {runtime.host}: resume it there (its CLI session lives on it).")
    if runtime.kind == Runtime.Kind.TMUX:
        pane = observe_one(runtime).pane
        if pane is not None and not pane.dead:
            raise ResumeError(f"{runtime.handle} is still running: stop it first (stop_worker).")


def resume(runtime, by, now=None, source=LivenessEvent.Source.CONTROLLER):
    """Relaunch a usage-limited run with its CLI's resume form; return the new runtime.

    Raises ResumeError (nothing started) when it is not resumable or the launch is refused (smoke
    test, budget, a concurrent resume: one successor per paused run is a database constraint)."""
    now = now or timezone.now()
    check_resumable(runtime)
    request = LaunchRequest(
        ticket_key=runtime.ticket.key,
        profile_name=runtime.profile,
        cwd=runtime.cwd,
        prompt_file="",
        tmux_socket=runtime.tmux_socket,
        prompt=settings.CONTROLROOM["RESUME_PROMPT"].encode() + b"\n",
        resumed_from=runtime,
    )
    try:
        successor = launch(request, now)
    except DispatchError as error:
        raise ResumeError(f"Cannot resume {runtime.handle}: {error}") from None
    message = f"resumed by {by} as {successor.handle} (resume {successor.resume_count})"
    transition = ledger.Transition(
        runtime, RuntimeClass.RESUMED, Reason.RESUMED, message, source,
        observed={"by": by, "successor": successor.pk, "session_id": runtime.agent_session_id},
        ticket_note=f"{runtime.handle} {message}",
    )  # fmt: skip
    if not ledger.apply([transition], now, settings.CONTROLROOM_HOST):
        raise ResumeError(f"{runtime.handle} changed while resuming; {successor.handle} was started, check it.")
    # The paused run's dead pane is of no further use.
    if runtime.kind == Runtime.Kind.TMUX:
        with contextlib.suppress(tmux_probe.TmuxError):
            tmux_probe.kill_session(runtime.tmux_socket, runtime.tmux_target)
    return successor


def auto_resume_enabled(profile_names):
    """The profiles (of these names) whose runs auto-resume. One query unless all do."""
    if settings.CONTROLROOM["AUTO_RESUME"]:
        return set(profile_names)
    return set(WorkerProfile.objects.filter(name__in=profile_names, auto_resume=True).values_list("name", flat=True))


def resume_at(runtime):
    """When the auto-resume of `runtime` fires: its reset, plus a slot per earlier run of the same
    profile and host with (about) the same reset — so one account's runs resume spread over a few
    minutes, not at once — plus a small random jitter. One query."""
    config = settings.CONTROLROOM
    earlier = Runtime.objects.filter(
        host=runtime.host,
        profile=runtime.profile,
        runtime_class__in=(RuntimeClass.USAGE_LIMITED, RuntimeClass.RESUMED),
        resumes_at__range=(runtime.resumes_at - SAME_RESET, runtime.resumes_at + SAME_RESET),
        pk__lt=runtime.pk,
    ).count()
    spread = earlier * config["RESUME_SPREAD"] + random.uniform(0, config["RESUME_JITTER"])
    return runtime.resumes_at + timedelta(seconds=spread)


def schedule_auto_resumes(runtime_ids):
    """After paused runs are recorded: schedule the auto-resume of each whose profile resumes
    (a django-q2 ONCE schedule on its host's cluster, by name, so scheduling twice changes
    nothing), or note on its ticket that the resume cap is reached. Returns the schedules."""
    runtimes = list(
        Runtime.objects.filter(pk__in=runtime_ids, runtime_class=RuntimeClass.USAGE_LIMITED, resumes_at__isnull=False)
    )
    enabled = auto_resume_enabled({r.profile for r in runtimes if r.profile})
    cap = settings.CONTROLROOM["MAX_RESUMES"]
    schedules = []
    for runtime in runtimes:
        if runtime.profile not in enabled:
            continue
        if runtime.resume_count >= cap:
            note = f"{runtime.handle}: usage limit again after {runtime.resume_count} resumes; resume it by hand"
            Ticket.objects.filter(pk=runtime.ticket_id).update(note=safe_text(note, 1000))
            continue
        schedule, _ = Schedule.objects.update_or_create(
            name=schedule_name(runtime.pk),
            defaults={
                "func": AUTO_RESUME_TASK,
                "args": repr((runtime.pk,)),
                "schedule_type": Schedule.ONCE,
                "repeats": -1,
                "next_run": resume_at(runtime),
                "cluster": runtime.host,
            },
        )
        schedules.append(schedule)
    return schedules


def after_pauses(runtime_ids):
    """The ledger's hook once paused runs are committed: never fails the caller."""
    try:
        with transaction.atomic():
            schedule_auto_resumes(runtime_ids)
    except Exception:
        logger.exception("cannot schedule the auto-resume of runtimes %s", runtime_ids)


def auto_resume(runtime_id, now=None):
    """The scheduled auto-resume of one paused run (runs once: a run already resumed, stopped or
    recovered is left alone). Returns a one-line summary for django-q2's task admin."""
    runtime = Runtime.objects.select_related("ticket").filter(pk=runtime_id).first()
    if runtime is None or runtime.runtime_class != RuntimeClass.USAGE_LIMITED:
        state = runtime.runtime_class if runtime else "gone"
        return f"runtime {runtime_id} is {state}: nothing to resume"
    try:
        successor = resume(runtime, AUTO_RESUMER, now)
    except ResumeError as error:
        Ticket.objects.filter(pk=runtime.ticket_id).update(note=safe_text(f"auto-resume failed: {error}", 1000))
        return f"not resumed: {error}"
    return f"resumed {runtime.handle} as {successor.handle}"
