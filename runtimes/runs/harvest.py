"""Turn a finished worker's output log into an exit transition (outcome, verdict, exit status)."""

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from runtimes import liveness, observe
from runtimes.files import read_stream_tail, read_tail
from runtimes.ledger import Transition
from runtimes.ledger import apply as apply_transitions
from runtimes.models import ExitOutcome, Provider, Reason, ReconcilerHeartbeat, RuntimeClass, WorkerProfile
from runtimes.runs import outcomes

# What decides a run is at the end of its log (Claude's last `result` line, Codex's last turn event
# and agent message), so only this much of the tail is read: far more than a final message
# (Claude's largest output is well under 1 MB of text), small enough that any log, of any size or
# content, is classified in well under a second with a few tens of MB.
READ_LIMIT = 4 * 1024 * 1024


def read_output(path, limit=READ_LIMIT):
    """The last `limit` bytes of an output log: the one place that reads an output log. A FIFO, a
    device or a directory raises OSError at once, as does a missing file."""
    return read_tail(path, limit)


def read_output_stream(stream):
    """The tail of an output log piped on a binary stream (read to its end, held bounded)."""
    return read_stream_tail(stream, READ_LIMIT)


def outcome_of(runtime, exit_code=None, exit_signal=None):
    """Classify how the run ended, from its output log when it has one."""
    if runtime.output_path and runtime.provider in (Provider.CLAUDE, Provider.CODEX):
        try:
            raw = read_output(runtime.output_path)
        except OSError:
            return outcomes.Outcome(
                ExitOutcome.FAILED, "unparseable-output", f"output log {runtime.output_path} is missing"
            )
        return outcomes.classify(runtime.provider, raw)
    # No machine-readable output to read: the exit status is all there is.
    if exit_code == 0:
        return outcomes.Outcome(ExitOutcome.COMPLETED, "exit-status", "exited with status 0")
    if exit_signal is not None:
        return outcomes.Outcome(ExitOutcome.FAILED, "interrupted", f"killed by signal {exit_signal}")
    return outcomes.Outcome(ExitOutcome.FAILED, "exit-status", f"exited with status {exit_code}")


def has_final_result(outcome):
    """Whether the log proves the run ended by itself (a result, not a cut-off stream)."""
    return outcome.reason not in ("unparseable-output", "interrupted")


def usage_updates(runtime, usage):
    """The Runtime fields a run's usage sets. A Codex run (tokens, no cost) is priced from its
    profile's per-million-token prices; no prices means the cost stays unknown. Queries the
    profile only for such a run."""
    if usage.cost_usd is None and usage.input_tokens is not None and runtime.profile:
        prices = (
            WorkerProfile.objects.filter(name=runtime.profile)
            .values_list("input_price_per_mtok", "cached_input_price_per_mtok", "output_price_per_mtok")
            .first()
        )
        if prices:
            usage = outcomes.price(usage, *prices)
    updates = {
        "turns": usage.turns,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cached_tokens": usage.cached_tokens,
        "cost_usd": usage.cost_usd,
    }
    if usage.session_id:
        updates["agent_session_id"] = usage.session_id
    return updates


def host_time_zone(host):
    """The IANA zone the worker host's CLIs print clock times in: its reconciler heartbeat's, this
    host's setting for itself, else UTC. One query."""
    zone = ReconcilerHeartbeat.objects.filter(host=host).values_list("time_zone", flat=True).first()
    if not zone and host == settings.CONTROLROOM_HOST:
        zone = settings.CONTROLROOM["HOST_TIME_ZONE"]
    return zone or "UTC"


def paused_until_text(resumes_at, zone, now):
    """ "15:00", or "Nov 28 15:00" when it is not within the next day, in the host's zone."""
    local = resumes_at.astimezone(outcomes._zone(zone))
    if resumes_at - now < timedelta(hours=20):
        return f"{local:%H:%M}"
    return f"{local:%b} {local.day} {local:%H:%M}"


def pause_transition(runtime, source, outcome, ended, pane_message, facts, now):
    """A run stopped by a usage limit: `usage-limited` until the reset (not exited, no banner).
    Unknown reset → CONTROLROOM_USAGE_LIMIT_PAUSE from now. None when it is already paused; a run
    a hook marked usage-limited while it still ran gets its reset, usage and end recorded now."""
    if runtime.runtime_class == RuntimeClass.USAGE_LIMITED and runtime.ended_at:
        return None
    zone = host_time_zone(runtime.host)
    resumes_at = outcomes.limit_resets_at(outcome.limit, now, zone)
    guessed = resumes_at is None
    if guessed:
        resumes_at = now + timedelta(seconds=settings.CONTROLROOM["USAGE_LIMIT_PAUSE"])
    until = paused_until_text(resumes_at, zone, now)
    message = "; ".join(part for part in (pane_message, outcome.message, f"paused until {until}") if part)
    facts["resumes_at"] = resumes_at.isoformat()
    facts["host_time_zone"] = zone
    facts["reset_guessed"] = guessed
    return Transition(
        runtime=runtime,
        to_class=RuntimeClass.USAGE_LIMITED,
        reason=Reason.USAGE_LIMIT,
        message=message,
        source=source,
        observed=facts,
        updates={**ended, "exit_outcome": ExitOutcome.NONE, "resumes_at": resumes_at, "ended_at": now},
        ticket_note=f"paused until {until} (usage limit){' — reset time not given' if guessed else ''}",
    )


def exit_transition(
    runtime, source, exit_code=None, exit_signal=None, pane_message="", observed=None, outcome=None, now=None
):
    """The transition to `exited`, with the run's outcome (read from its log unless given); or
    to `usage-limited` when the run stopped on a usage limit (None if it is already)."""
    outcome = outcome or outcome_of(runtime, exit_code, exit_signal)
    facts = dict(observed or {})
    facts["outcome"] = outcome.as_dict()
    ended = {"exit_code": exit_code, "exit_signal": exit_signal, **usage_updates(runtime, outcome.usage)}
    if outcome.paused:
        return pause_transition(runtime, source, outcome, ended, pane_message, facts, now or timezone.now())
    message = "; ".join(part for part in (pane_message, outcome.message) if part)
    return Transition(
        runtime=runtime,
        to_class=RuntimeClass.EXITED,
        reason=outcome.reason,
        message=message,
        source=source,
        observed=facts,
        updates={**ended, "exit_outcome": outcome.exit_outcome},
        verdict=outcome.verdict,
        verdict_summary=outcome.final_text,
    )


class HarvestError(Exception):
    """The runtime cannot be harvested now; the message says why."""


def harvest(runtime, observation, now, host):
    """Harvest a finished runtime from the observation its caller made (`observe.observe_one`):
    classify its output and record the exit (source `harvest`).

    Returns the transition written, or None when it was already harvested (harvesting twice
    changes nothing). Refuses a worker that is still running or cannot be observed. How it
    ended is the classifier's answer, so a pane tmux gave no status for uses the wrapper's record.
    """
    if runtime.runtime_class in (RuntimeClass.EXITED, RuntimeClass.RESUMED):
        return None
    if runtime.runtime_class in (RuntimeClass.KILLED_BY_CONTROLLER, RuntimeClass.COMPLETED_BY_CONTROLLER):
        raise HarvestError(f"{runtime.handle} is already settled as {runtime.runtime_class}.")
    if runtime.controller_action == liveness.STOPPING:
        raise HarvestError(f"{runtime.handle} is being stopped by the controller: its end is a controller kill.")
    result = liveness.classify(observe.facts_of(runtime), observation, now, observe.policy_from_settings())
    if result.runtime_class == RuntimeClass.UNKNOWN:
        raise HarvestError(f"Cannot see {runtime.handle}: {result.message}")
    pane, process = observation.pane, observation.process
    if (pane and not pane.dead) or (process and process.state == liveness.ALIVE):
        raise HarvestError(f"{runtime.handle} is still running; stop it first (stop_worker) or wait for it to end.")
    code, signal = (
        (result.exit_code, result.exit_signal) if result.runtime_class == RuntimeClass.EXITED else (None, None)
    )
    transition = exit_transition(runtime, "harvest", code, signal, result.message, observation.as_dict(), now=now)
    written = apply_transitions([transition], now, host) if transition else []
    return written[0] if written else None
