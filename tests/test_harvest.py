import json
import sys
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

import runtimes.runs.exec_worker
from runtimes.models import LivenessEvent, RuntimeClass
from runtimes.reconcile import reconcile
from tests.conftest import make_runtime, make_ticket, pane_is_dead, start_session, wait_for
from tickets.models import Ticket, Verdict

pytestmark = pytest.mark.django_db
EXEC_WORKER = Path(runtimes.runs.exec_worker.__file__)


def run_worker(tmux, tmux_socket, fake_bin, tmp_path, model, ticket=None, provider="claude", session="cr-w"):
    """Run a fake CLI in a real tmux pane through the launch wrapper; return its runtime."""
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Fix the bug.")
    log = tmp_path / f"{session}.jsonl"
    cli = [str(fake_bin / "claude"), "-p", "--output-format", "stream-json", "--verbose", "--model", model]
    if provider == "codex":
        cli = [str(fake_bin / "codex"), "exec", "--json", "-m", model, "-"]
    argv = [sys.executable, str(EXEC_WORKER), "--stdin", str(prompt), "--stdout", str(log), "--", *cli]
    start_session(tmux, session, *argv)
    # Dead, and the wrapper has recorded how (tmux itself sometimes never reports it).
    assert wait_for(lambda: pane_is_dead(tmux, session, status_reported=False) and Path(f"{log}.exit").exists())
    return make_runtime(
        ticket=ticket or make_ticket(),
        handle=f"tmux:{session}",
        tmux_socket=tmux_socket,
        tmux_target=session,
        provider=provider,
        model=model,
        output_path=str(log),
        runtime_class=RuntimeClass.TMUX_LIVE,
    )


def test_max_turns_is_partial_useful_with_a_harvest_note_and_no_banner(tmux, tmux_socket, fake_bin, tmp_path):
    runtime = run_worker(tmux, tmux_socket, fake_bin, tmp_path, "claude-max-turns")
    reconcile()
    runtime.refresh_from_db()
    assert (runtime.runtime_class, runtime.exit_outcome, runtime.class_reason) == (
        "exited",
        "partial-useful",
        "max-turns",
    )
    assert runtime.exit_code == 1
    ticket = Ticket.objects.get(pk=runtime.ticket_id)
    assert ticket.state == "in_progress" and ticket.failure_reason == ""
    assert ticket.note.startswith("partial: max turns, harvest needed")


def test_a_failed_run_raises_the_banner_with_its_reason(tmux, tmux_socket, fake_bin, tmp_path):
    runtime = run_worker(tmux, tmux_socket, fake_bin, tmp_path, "claude-not-logged-in")
    reconcile()
    runtime.refresh_from_db()
    assert (runtime.exit_outcome, runtime.class_reason) == ("failed", "auth-error")
    assert "auth error" in Ticket.objects.get(pk=runtime.ticket_id).failure_reason


def test_a_done_run_records_its_verdict_and_moves_the_ticket_to_review(tmux, tmux_socket, fake_bin, tmp_path):
    runtime = run_worker(tmux, tmux_socket, fake_bin, tmp_path, "claude-sonnet-4-6")
    reconcile()
    runtime.refresh_from_db()
    assert (runtime.exit_outcome, runtime.exit_code) == ("completed", 0)
    verdict = Verdict.objects.get(runtime=runtime)
    assert (verdict.gate, verdict.outcome, verdict.summary) == ("coder", "done", "DONE — patch written")
    assert Ticket.objects.get(pk=runtime.ticket_id).state == "review"


def test_a_codex_run_is_harvested_from_its_json_events(tmux, tmux_socket, fake_bin, tmp_path):
    (fake_bin / "auth_mode").write_text("chatgpt")
    runtime = run_worker(tmux, tmux_socket, fake_bin, tmp_path, "codex-mini-latest", provider="codex")
    reconcile()
    runtime.refresh_from_db()
    assert (runtime.exit_outcome, runtime.class_reason) == ("failed", "unsupported-model")


def test_a_run_killed_before_its_result_is_failed_interrupted(tmux, tmux_socket, fake_bin, tmp_path):
    runtime = run_worker(tmux, tmux_socket, fake_bin, tmp_path, "claude-opus-crash")
    reconcile()
    runtime.refresh_from_db()
    assert (runtime.exit_outcome, runtime.class_reason, runtime.exit_signal) == ("failed", "interrupted", 9)


def test_harvest_command_is_idempotent(tmux, tmux_socket, fake_bin, tmp_path, capsys):
    runtime = run_worker(tmux, tmux_socket, fake_bin, tmp_path, "claude-sonnet-4-6")
    call_command("harvest_runtime", runtime.handle)
    assert "exited, completed" in capsys.readouterr().out
    call_command("harvest_runtime", runtime.handle)
    assert "already harvested" in capsys.readouterr().out
    assert LivenessEvent.objects.filter(runtime=runtime, source="harvest").count() == 1
    assert Verdict.objects.filter(runtime=runtime).count() == 1
    reconcile()  # and the reconciler does not harvest it again either
    assert LivenessEvent.objects.filter(runtime=runtime).count() == 1


def test_harvest_refuses_a_running_worker(tmux, tmux_socket):
    start_session(tmux, "cr-busy", "sleep", "60")
    runtime = make_runtime(tmux_socket=tmux_socket, tmux_target="cr-busy", runtime_class="tmux-live")
    with pytest.raises(CommandError, match="still running"):
        call_command("harvest_runtime", runtime.handle)
    runtime.refresh_from_db()
    assert runtime.runtime_class == "tmux-live" and not runtime.events.exists()


def test_harvest_of_an_unknown_handle_says_what_to_do():
    with pytest.raises(CommandError, match="No runtime with handle 'tmux:nope'"):
        call_command("harvest_runtime", "tmux:nope")


def test_a_validator_verdict_closes_the_ticket_and_clears_its_banner():
    ticket = make_ticket(failure_reason="tmux:cr-old failed: api error")
    Verdict.objects.create(ticket=ticket, gate="validator", outcome="approved", author="qa-bot", recorded_by="maria")
    ticket.refresh_from_db()
    assert (ticket.state, ticket.closed_by, ticket.failure_reason) == ("done", "maria", "")
    assert ticket.closed_at is not None


def test_a_non_closing_verdict_leaves_the_banner():
    ticket = make_ticket(failure_reason="broken")
    Verdict.objects.create(ticket=ticket, gate="reviewer", outcome="approved")
    Verdict.objects.create(ticket=ticket, gate="validator", outcome="changes_requested")
    ticket.refresh_from_db()
    assert (ticket.state, ticket.failure_reason) == ("in_progress", "broken")


def test_recover_runtime_completes_it_and_clears_the_banner(capsys):
    ticket = make_ticket(failure_reason="tmux:cr-x: session missing")
    runtime = make_runtime(ticket=ticket, runtime_class=RuntimeClass.TMUX_MISSING)
    call_command("recover_runtime", runtime.handle)
    runtime.refresh_from_db()
    ticket.refresh_from_db()
    assert (runtime.runtime_class, runtime.controller_action) == ("completed-by-controller", "complete")
    assert ticket.failure_reason == ""
    assert runtime.events.get().source == "controller"
    call_command("recover_runtime", runtime.handle)
    assert "nothing changed" in capsys.readouterr().out.splitlines()[-1]
    assert runtime.events.count() == 1


def test_clear_stale_banners_cleans_closed_tickets_only(capsys):
    stale = make_ticket(state="done", closed_at=timezone.now(), failure_reason="old failure")
    make_ticket(state="cancelled", closed_at=timezone.now(), failure_reason="older")
    live = make_ticket(failure_reason="current failure")
    call_command("clear_stale_banners", "--dry-run")
    assert "Would clear 2 stale banner(s)" in capsys.readouterr().out
    assert Ticket.objects.get(pk=stale.pk).failure_reason == "old failure"
    call_command("clear_stale_banners")
    assert "Cleared 2 stale banner(s)." in capsys.readouterr().out
    assert Ticket.objects.exclude(failure_reason="").get() == live


def test_classify_output_prints_one_json_object(tmp_path, capsys):
    log = tmp_path / "out.jsonl"
    log.write_text(
        '{"type":"result","subtype":"error_max_turns","is_error":true,"num_turns":41,"total_cost_usd":1.5}\n'
    )
    call_command("classify_output", "--provider", "claude", str(log))
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    data = json.loads(out)
    assert (data["exit_outcome"], data["reason"], data["verdict"], data["turns"], data["cost_usd"]) == (
        "partial-useful",
        "max-turns",
        None,
        41,
        1.5,
    )


def test_classify_output_of_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(CommandError, match="Cannot read"):
        call_command("classify_output", "--provider", "codex", str(tmp_path / "nope"))


def withholding_exit_status(monkeypatch):
    """Fault injection: tmux 3.3a sometimes never reports a dead pane's status; strip it."""
    import dataclasses

    from runtimes.probes import tmux as tmux_probe

    real = tmux_probe.list_panes

    def list_panes(socket, *args, **kwargs):
        snapshot = real(socket, *args, **kwargs)
        snapshot.by_target = {
            key: dataclasses.replace(pane, dead_status=None, dead_signal=None)
            for key, pane in snapshot.by_target.items()
        }
        return snapshot

    monkeypatch.setattr(tmux_probe, "list_panes", list_panes)


def test_harvest_takes_the_exit_status_from_the_wrapper_when_tmux_withholds_it(
    tmux, tmux_socket, fake_bin, tmp_path, monkeypatch
):
    runtime = run_worker(tmux, tmux_socket, fake_bin, tmp_path, "claude-max-turns")
    withholding_exit_status(monkeypatch)
    call_command("harvest_runtime", runtime.handle)
    runtime.refresh_from_db()
    assert (runtime.runtime_class, runtime.exit_code, runtime.exit_outcome) == ("exited", 1, "partial-useful")


def test_a_gone_session_s_log_is_parsed_once(tmux, tmux_socket, fake_bin, tmp_path, monkeypatch):
    from runtimes.runs import outcomes

    runtime = run_worker(tmux, tmux_socket, fake_bin, tmp_path, "claude-sonnet-4-6")
    tmux.cmd("kill-session", "-t", "cr-w")
    calls = []
    real = outcomes.classify
    monkeypatch.setattr(outcomes, "classify", lambda *args: calls.append(args) or real(*args))
    reconcile()
    runtime.refresh_from_db()
    assert (runtime.runtime_class, runtime.exit_outcome) == ("exited", "completed")
    assert len(calls) == 1
