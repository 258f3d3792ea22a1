"""Apply runtime_class transitions: the one place that changes a runtime's class.

Every caller (reconciler, harvest, controller stop/recover) builds Transitions and hands them to
`apply()`, which in one transaction re-reads the rows' classes and controller actions under lock,
keeps only the transitions whose old class and action still hold (compare-and-set; so a pass that
observed a worker before the controller said it is stopping it can never record its death as an
exit or a failure), bulk-updates those rows, appends one
LivenessEvent each, records verdicts from final messages, and applies the ticket effects. So two
reconcilers can never record the same transition twice, and a class never changes without its
ledger event.
"""

from dataclasses import dataclass, field

from django.conf import settings
from django.db import connection, transaction

from runtimes import plainsql
from runtimes.models import FINAL_CLASSES, ExitOutcome, LivenessEvent, Reason, Runtime, RuntimeClass
from runtimes.notify import service as notify
from runtimes.text import safe_text
from tickets.models import Ticket, Verdict

# What every transition writes; the further fields it sets (its `updates`, an `ended_at`) join them.
CLASS_FIELDS = ("runtime_class", "class_reason", "class_message", "class_changed_at")
EVENT_FIELDS = ("runtime", "at", "from_class", "to_class", "reason", "message", "source", "host", "observed")


@dataclass
class Transition:
    runtime: Runtime
    to_class: str
    reason: str
    message: str
    source: str
    observed: dict = field(default_factory=dict)
    updates: dict = field(default_factory=dict)  # further Runtime fields (exit_code, exit_outcome, …)
    verdict: str | None = None  # the final message's verdict, recorded as a coder Verdict
    verdict_summary: str = ""
    ticket_note: str = ""  # the ticket's note for a pause ("paused until 15:00 (usage limit)")

    @property
    def from_class(self):
        return self.runtime.runtime_class

    @property
    def from_action(self):
        return self.runtime.controller_action


def _limit():
    return settings.CONTROLROOM["MAX_MESSAGE_CHARS"]


def _claim(ids, wait):
    """The current (class, controller action) of each row, read under lock: rows another writer
    holds are skipped (a reconciler's batch), or waited for (`wait`: the controller's one row)."""
    rows = Runtime.objects.filter(pk__in=ids)
    if connection.features.has_select_for_update_skip_locked:
        rows = rows.select_for_update(skip_locked=not wait, of=("self",))
    fields = ("pk", "runtime_class", "controller_action")
    return {pk: (runtime_class, action) for pk, runtime_class, action in rows.values_list(*fields)}


def set_controller_action(runtime, action, expected, settled_too=False):
    """Compare-and-set the controller's intent (no class change, so no ledger event): only while
    the row's action is one of `expected`, and (unless `settled_too`) only while it is unsettled.
    Returns whether it was set."""
    rows = Runtime.objects.filter(pk=runtime.pk, controller_action__in=expected)
    if not settled_too:
        rows = rows.exclude(runtime_class__in=FINAL_CLASSES)
    changed = rows.update(controller_action=action)
    if changed:
        runtime.controller_action = action
    return bool(changed)


def apply(transitions, now, host, wait=False, locked=False, after_commit=None):
    """Write the transitions whose old class and controller action still hold; return those
    written. With `wait`, rows locked by another writer are waited for instead of skipped.
    `locked`: the caller read these rows under lock in its own open transaction, so their
    classes and actions still hold, and every transition is written (no re-read, no savepoint).
    The steps for after the commit (notifications, auto-resume, budget warnings) run on commit,
    or, given an `after_commit` list, are added to it for the caller to run once committed."""
    if after_commit is None:
        after_commit = _OnCommit()
    if not transitions:
        return []
    if locked and not connection.in_atomic_block:
        raise RuntimeError("ledger.apply(locked=True) needs the caller's transaction that read the rows")
    with transaction.atomic(savepoint=not locked):
        if locked:
            accepted = list(transitions)
        else:
            current = _claim([t.runtime.pk for t in transitions], wait)
            accepted = [t for t in transitions if current.get(t.runtime.pk) == (t.from_class, t.from_action)]
        if not accepted:
            return []
        events, written = [], []
        for t in accepted:
            runtime = t.runtime
            message = safe_text(t.message, _limit())
            events.append(
                LivenessEvent(
                    runtime=runtime, at=now, from_class=runtime.runtime_class, to_class=t.to_class, reason=t.reason,
                    message=message, source=t.source, host=host, observed=t.observed,
                )
            )  # fmt: skip
            runtime.runtime_class = t.to_class
            runtime.class_reason = t.reason
            runtime.class_message = message
            runtime.class_changed_at = now
            fields = [*CLASS_FIELDS, *t.updates]
            for name, value in t.updates.items():
                setattr(runtime, name, value)
            if t.to_class in (RuntimeClass.EXITED, RuntimeClass.KILLED_BY_CONTROLLER) and runtime.ended_at is None:
                runtime.ended_at = now
                fields.append("ended_at")
            written.append((runtime, tuple(dict.fromkeys(fields))))
        _update_rows(written)
        plainsql.insert_rows(LivenessEvent, events, EVENT_FIELDS)
        _record_verdicts(accepted, now)
        _apply_ticket_effects(accepted, now)
        # Notifications leave only once this transaction has committed, and never fail it.
        changed = [t.runtime.pk for t in accepted]
        after_commit.append(lambda: notify.after_transitions(changed, now))
        # Runs that stopped on a usage limit (their process ended): schedule their auto-resume.
        paused = [
            t.runtime.pk for t in accepted if t.to_class == RuntimeClass.USAGE_LIMITED and t.updates.get("ended_at")
        ]
        if paused:
            after_commit.append(lambda: _after_pauses(paused))
        # Runs whose cost was just recorded: warn for budgets near their limit.
        costed = [t.runtime.pk for t in accepted if t.updates.get("cost_usd") is not None]
        if costed:
            after_commit.append(lambda: _after_costs(costed, now))
    return accepted


class _OnCommit:
    """An after_commit list that hands each step to Django's on_commit (robust: a failing step is
    logged and never fails the commit)."""

    def append(self, step):
        transaction.on_commit(step, robust=True)


def _update_rows(written):
    """Save each (runtime, fields) pair's fields: rows that write the same fields share one write_rows."""
    groups = {}
    for runtime, fields in written:
        groups.setdefault(fields, []).append(runtime)
    for fields, rows in groups.items():
        plainsql.write_rows(rows, fields)


def _after_pauses(runtime_ids):
    from runtimes.runs import resume  # resume launches workers, which records through this module

    resume.after_pauses(runtime_ids)


def _after_costs(runtime_ids, now):
    from runtimes.runs import budgets

    budgets.warn_after_runs(runtime_ids, now)


def _record_verdicts(accepted, now):
    verdicts = [
        Verdict(
            ticket_id=t.runtime.ticket_id,
            runtime=t.runtime,
            gate=Verdict.Gate.CODER,
            outcome=t.verdict,
            summary=safe_text(t.verdict_summary, _limit()),
            author=t.runtime.profile or t.runtime.provider,
            created_at=now,
        )
        for t in accepted
        if t.verdict
    ]
    # One verdict per run (a unique constraint): a second harvest records nothing new.
    Verdict.objects.bulk_create(verdicts, ignore_conflicts=True)


def _label(reason):
    return Reason(reason).label if reason in Reason.values else reason


def ticket_effect(t):
    """What a transition does to its ticket: (field updates, only while the ticket is working)."""
    runtime = t.runtime
    outcome = runtime.exit_outcome
    if t.to_class == RuntimeClass.COMPLETED_BY_CONTROLLER:
        return {"failure_reason": "", "note": f"completed by the controller from {runtime.handle}"}, False
    if t.to_class in (RuntimeClass.USAGE_LIMITED, RuntimeClass.RESUMED) and t.ticket_note:
        return {"note": t.ticket_note}, True
    if t.to_class in (RuntimeClass.TMUX_MISSING, RuntimeClass.PROCESS_DEAD):
        return {"failure_reason": f"{runtime.handle}: {_label(t.reason)} — {t.message}"}, True
    if t.to_class != RuntimeClass.EXITED:
        return None, True
    if outcome == ExitOutcome.FAILED:
        return {"failure_reason": f"{runtime.handle} failed: {_label(t.reason)} — {t.message}"}, True
    if outcome == ExitOutcome.PARTIAL_USEFUL:
        limit = "max budget" if t.reason == Reason.MAX_BUDGET else "max turns"
        if t.reason == Reason.VERDICT_PARTIAL:
            limit = "worker reported partial work"
        return {"note": f"partial: {limit}, harvest needed ({runtime.handle})"}, True
    if outcome == ExitOutcome.COMPLETED and t.verdict in (Verdict.Outcome.DONE, Verdict.Outcome.REVIEW):
        return {"state": Ticket.State.REVIEW, "note": f"{runtime.handle} finished: {t.verdict}"}, True
    if outcome == ExitOutcome.COMPLETED and t.verdict == Verdict.Outcome.QUESTION:
        return {"state": Ticket.State.WAITING, "note": f"{runtime.handle} asked a question"}, True
    return None, True


def _apply_ticket_effects(accepted, now):
    """Merge each ticket's effects (later transitions win), then one UPDATE per distinct change."""
    merged = {}
    for t in accepted:
        updates, only_if_working = ticket_effect(t)
        if updates:
            previous, working = merged.get(t.runtime.ticket_id, ({}, True))
            merged[t.runtime.ticket_id] = ({**previous, **updates}, working and only_if_working)
    groups = {}
    for ticket_id, (updates, only_if_working) in merged.items():
        clean = tuple(sorted((k, v if k == "state" else safe_text(v, _limit())) for k, v in updates.items()))
        groups.setdefault((clean, only_if_working), []).append(ticket_id)
    for (updates, only_if_working), ticket_ids in groups.items():
        tickets = Ticket.objects.filter(pk__in=ticket_ids)
        if only_if_working:
            # A ticket that stopped expecting a worker (closed, waiting, umbrella) gets no banner.
            tickets = tickets.filter(Ticket.expects_worker_q())
        tickets.update(updated_at=now, **dict(updates))
