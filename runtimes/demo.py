"""Realistic demo data for a fresh Control Room; safe to load again (keyed by ticket key / handle):
a second load creates only what is missing and never touches what exists, so a demo worker an
operator stopped or recovered, or a ticket they cancelled, stays as they left it.

The demo runtimes live on hosts named `demo-a` and `demo-b`, which no reconciler here probes, so
they keep the states shown below instead of being re-observed against this machine.
"""

from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from runtimes.models import ExitOutcome, LivenessEvent, Reason, Runtime, RuntimeClass
from tickets.models import Ticket, Verdict

T = Ticket.State
K = Ticket.Kind
C = RuntimeClass

TICKETS = [
    # key, title, state, kind, owner, parent, failure_reason
    ("MC-4490", "Agent fleet: move every worker to the new runner", T.IN_PROGRESS, K.UMBRELLA, "ops", None, ""),
    ("MC-4491", "Fix flaky login test", T.DONE, K.TASK, "maria", "MC-4490", ""),
    ("MC-4494", "Pair on the billing export (interactive console)", T.WAITING, K.INTERACTIVE, "li", None, ""),
    ("MC-4502", "Add retry budget to the webhook sender", T.IN_PROGRESS, K.TASK, "sam", "MC-4490", ""),
    ("MC-4503", "Nightly dependency audit", T.IN_PROGRESS, K.TASK, "hermes", None, ""),
    ("MC-4504", "Rebuild search index", T.IN_PROGRESS, K.TASK, "hermes", None,
     "hermes-bg:proc_9f8e7d6c5b4a: process exited — pid 48211 is gone"),
    ("MC-4505", "Port the CSV importer to streaming", T.IN_PROGRESS, K.TASK, "sam", "MC-4490", ""),
    ("MC-4506", "Upgrade Django to 5.2 LTS", T.IN_PROGRESS, K.TASK, "maria", "MC-4490",
     "tmux:cr-mc-4506: session missing — tmux session or pane not found"),
    ("MC-4507", "Spike: GraphQL gateway", T.CANCELLED, K.TASK, "li", None, ""),
    ("MC-4508", "Console for on-call debugging", T.IN_PROGRESS, K.INTERACTIVE, "ops", None, ""),
]  # fmt: skip

RUNTIMES = [
    # ticket, handle, kind, host, class, reason, message, extra fields, minutes ago started
    ("MC-4491", "tmux:cr-mc-4491-a1", "tmux", "demo-a", C.EXITED, Reason.COMPLETED, "finished",
     {"provider": "claude", "model": "claude-opus-4-7", "tmux_target": "cr-mc-4491-a1", "exit_code": 0,
      "exit_outcome": ExitOutcome.COMPLETED, "profile": "claude_opus_1m_high"}, 600),
    ("MC-4494", "ws:console-17", "websocket", "demo-a", C.WEBSOCKET_IDLE, Reason.HEARTBEAT_STALE,
     "no activity for 5400s", {"provider": "other", "last_activity": 90}, 240),
    ("MC-4502", "tmux:cr-mc-4502-b7", "tmux", "demo-a", C.TMUX_LIVE, Reason.PANE_ALIVE, "pane %3 pid 51234 running",
     {"provider": "claude", "model": "claude-sonnet-4-6", "tmux_target": "cr-mc-4502-b7", "pid": 51234,
      "profile": "claude_sonnet_default", "last_activity": 1}, 35),
    ("MC-4503", "hermes-bg:proc_0123456789ab", "process", "demo-b", C.PROCESS_LIVE, Reason.PROCESS_ALIVE,
     "pid 48102 alive", {"provider": "hermes", "pid": 48102, "last_activity": 2}, 50),
    ("MC-4504", "hermes-bg:proc_9f8e7d6c5b4a", "process", "demo-b", C.PROCESS_DEAD, Reason.PROCESS_EXITED,
     "pid 48211 is gone", {"provider": "hermes", "pid": 48211}, 180),
    ("MC-4505", "tmux:cr-mc-4505-c2", "tmux", "demo-a", C.EXITED, Reason.MAX_TURNS,
     "pane %5 exited with status 1; Reached maximum number of turns (40)",
     {"provider": "claude", "model": "claude-opus-4-7", "tmux_target": "cr-mc-4505-c2", "exit_code": 1,
      "exit_outcome": ExitOutcome.PARTIAL_USEFUL, "profile": "claude_opus_1m_high"}, 120),
    ("MC-4506", "tmux:cr-mc-4506", "tmux", "demo-a", C.TMUX_MISSING, Reason.SESSION_MISSING,
     "tmux session or pane not found", {"provider": "codex", "model": "gpt-5.5", "tmux_target": "cr-mc-4506"}, 300),
    ("MC-4507", "tmux:cr-mc-4507-d4", "tmux", "demo-b", C.KILLED_BY_CONTROLLER, Reason.CONTROLLER_KILL,
     "stopped by reaper: tmux session cr-mc-4507-d4 killed",
     {"provider": "codex", "model": "gpt-5.4", "tmux_target": "cr-mc-4507-d4", "controller_action": "kill"}, 900),
    ("MC-4508", "ws:console-22", "websocket", "demo-a", C.WEBSOCKET_ACTIVE, Reason.RECENT_ACTIVITY,
     "last activity 20s ago", {"provider": "other", "last_activity": 0}, 15),
]  # fmt: skip


@transaction.atomic
def seed(now=None):
    """Create the demo rows that are missing; returns (tickets created, runtimes created)."""
    now = now or timezone.now()
    tickets_created = runtimes_created = 0
    tickets = {}
    for key, title, state, kind, owner, parent, banner in TICKETS:
        closed = state in Ticket.CLOSED_STATES
        ticket, created = Ticket.objects.get_or_create(
            key=key,
            defaults={
                "title": title,
                "state": state,
                "kind": kind,
                "owner": owner,
                "parent": tickets.get(parent),
                "failure_reason": banner,
                "closed_at": now - timedelta(hours=2) if closed else None,
                "closed_by": "qa-bot" if state == T.DONE else ("ops" if closed else ""),
            },
        )
        tickets[key] = ticket
        tickets_created += created

    for key, handle, kind, host, runtime_class, reason, message, extra, minutes in RUNTIMES:
        extra = dict(extra)
        activity = extra.pop("last_activity", None)
        started = now - timedelta(minutes=minutes)
        runtime, created = Runtime.objects.get_or_create(
            host=host,
            handle=handle,
            defaults={
                "ticket": tickets[key],
                "kind": kind,
                "runtime_class": runtime_class,
                "class_reason": reason,
                "class_message": message,
                "class_changed_at": started + timedelta(minutes=minutes // 2),
                "started_at": started,
                "last_activity_at": now - timedelta(minutes=activity) if activity is not None else None,
                "ended_at": now - timedelta(minutes=minutes // 2)
                if runtime_class in (C.EXITED, C.KILLED_BY_CONTROLLER)
                else None,
                **extra,
            },
        )
        runtimes_created += created
        if created:
            _demo_ledger(runtime, started, reason, message)

    Verdict.objects.get_or_create(
        ticket=tickets["MC-4491"],
        gate=Verdict.Gate.CODER,
        runtime=Runtime.objects.get(host="demo-a", handle="tmux:cr-mc-4491-a1"),
        defaults={"outcome": Verdict.Outcome.DONE, "summary": "DONE — test fixed, retries removed", "author": "claude"},
    )
    Verdict.objects.get_or_create(
        ticket=tickets["MC-4491"],
        gate=Verdict.Gate.VALIDATOR,
        defaults={
            "outcome": Verdict.Outcome.APPROVED,
            "summary": "CI green three times in a row",
            "author": "qa-bot",
            "recorded_by": "qa-bot",
        },
    )
    return tickets_created, runtimes_created


def _demo_ledger(runtime, started, reason, message):
    events = [
        LivenessEvent(runtime=runtime, at=started, from_class="", to_class=C.PENDING, reason=Reason.LAUNCHED,
                      message="launched", source=LivenessEvent.Source.LAUNCH, host=runtime.host),
    ]  # fmt: skip
    if runtime.runtime_class != C.PENDING:
        events.append(
            LivenessEvent(runtime=runtime, at=runtime.class_changed_at, from_class=C.PENDING,
                          to_class=runtime.runtime_class, reason=reason, message=message,
                          source=LivenessEvent.Source.RECONCILER, host=runtime.host)
        )  # fmt: skip
    LivenessEvent.objects.bulk_create(events)
