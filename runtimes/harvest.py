"""Turn a finished worker's output log into an exit transition (outcome, verdict, exit status)."""

import os

from runtimes import observe, outcomes
from runtimes.ledger import Transition
from runtimes.ledger import apply as apply_transitions
from runtimes.models import ExitOutcome, Provider, RuntimeClass

# The result line is at the end of the log; a huge log is read from its tail.
READ_LIMIT = 8 * 1024 * 1024


def read_output(path):
    """The tail of the output log as bytes, or None when it does not exist or cannot be read."""
    try:
        with open(path, "rb") as log:
            log.seek(0, os.SEEK_END)
            size = log.tell()
            log.seek(max(size - READ_LIMIT, 0))
            return log.read()
    except OSError:
        return None


def outcome_of(runtime, exit_code=None, exit_signal=None):
    """Classify how the run ended, from its output log when it has one."""
    if runtime.output_path and runtime.provider in (Provider.CLAUDE, Provider.CODEX):
        raw = read_output(runtime.output_path)
        if raw is None:
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


def exit_transition(runtime, source, exit_code=None, exit_signal=None, pane_message="", observed=None):
    outcome = outcome_of(runtime, exit_code, exit_signal)
    message = "; ".join(part for part in (pane_message, outcome.message) if part)
    facts = dict(observed or {})
    facts["outcome"] = outcome.as_dict()
    return Transition(
        runtime=runtime,
        to_class=RuntimeClass.EXITED,
        reason=outcome.reason,
        message=message,
        source=source,
        observed=facts,
        updates={"exit_code": exit_code, "exit_signal": exit_signal, "exit_outcome": outcome.exit_outcome},
        verdict=outcome.verdict,
        verdict_summary=outcome.final_text,
    )


class HarvestError(Exception):
    """The runtime cannot be harvested now; the message says why."""


def harvest(runtime, now, host):
    """Harvest a finished runtime: classify its output and record the exit (source `harvest`).

    Returns the transition written, or None when it was already harvested (harvesting twice
    changes nothing). Refuses a worker that is still running.
    """
    if runtime.runtime_class == RuntimeClass.EXITED:
        return None
    if runtime.runtime_class in (RuntimeClass.KILLED_BY_CONTROLLER, RuntimeClass.COMPLETED_BY_CONTROLLER):
        raise HarvestError(f"{runtime.handle} is already settled as {runtime.runtime_class}.")
    snapshot = observe.Snapshot.gather([runtime])
    observation = snapshot.observe(runtime)
    exit_code = exit_signal = None
    pane_message = ""
    if observation.tmux_error:
        raise HarvestError(f"Cannot see {runtime.handle}'s tmux pane: {observation.tmux_error}")
    if observation.pane and not observation.pane.dead:
        raise HarvestError(f"{runtime.handle} is still running; stop it first (stop_worker) or wait for it to end.")
    if observation.process and observation.process.state == "alive":
        raise HarvestError(f"{runtime.handle} (pid {runtime.pid}) is still running.")
    if observation.pane:
        exit_code, exit_signal = observation.pane.dead_status, observation.pane.dead_signal
        pane_message = f"pane {observation.pane.pane_id} ended"
    transition = exit_transition(runtime, "harvest", exit_code, exit_signal, pane_message, observation.as_dict())
    written = apply_transitions([transition], now, host)
    return written[0] if written else None
