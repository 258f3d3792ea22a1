"""Resuming usage-limited runs: the CLIs' resume forms, the ledger, the cap and the spread."""

from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from django_q.models import Schedule

from runtimes.models import LivenessEvent, Runtime, WorkerProfile
from runtimes.reconcile import reconcile
from runtimes.runs import resume
from runtimes.runs.dispatch import worker_argv
from tests.conftest import make_runtime, make_ticket, wait_for
from tests.test_dispatch import launch_args as launch_args  # a fixture
from tests.test_dispatch import model_calls
from tickets.models import Ticket

pytestmark = pytest.mark.django_db


def test_resume_argv_is_claude_resume_flag_and_codex_exec_resume_subcommand(settings):
    settings.CONTROLROOM = {**settings.CONTROLROOM, "CLAUDE_BIN": "claude", "CODEX_BIN": "codex"}
    claude = WorkerProfile(name="c", provider="claude", model="claude-opus-4-7", max_turns=30)
    codex = WorkerProfile(name="x", provider="codex", model="gpt-5.5", effort="high")
    assert worker_argv(claude, (), "sess-9") == [
        "claude", "-p", "--output-format", "stream-json", "--verbose", "--model", "claude-opus-4-7",
        "--max-turns", "30", "--resume", "sess-9",
    ]  # fmt: skip
    assert worker_argv(codex, (), "th-9") == [
        "codex", "exec", "--json", "--skip-git-repo-check", "-m", "gpt-5.5", "-c", "model_reasoning_effort=high",
        "resume", "th-9", "-",
    ]  # fmt: skip


def paused_run(fake_bin, launch_args, provider="claude", model="claude-session-limit", name="limited", **fields):
    """Launch a real worker (fake CLI in tmux) that stops on a usage limit; reconcile until paused."""
    WorkerProfile.objects.get_or_create(name=name, defaults={"provider": provider, "model": model, **fields})
    ticket = make_ticket()
    call_command("launch_worker", *launch_args(ticket, name))
    runtime = Runtime.objects.get(ticket=ticket)
    assert wait_for(lambda: (reconcile(), Runtime.objects.get(pk=runtime.pk).runtime_class == "usage-limited")[1])
    return Runtime.objects.get(pk=runtime.pk)


def finish(runtime):
    assert wait_for(lambda: (reconcile(), Runtime.objects.get(pk=runtime.pk).runtime_class != "pending")[1])
    assert wait_for(
        lambda: (reconcile(), Runtime.objects.get(pk=runtime.pk).runtime_class in ("exited", "usage-limited"))[1]
    )
    return Runtime.objects.get(pk=runtime.pk)


def test_resuming_a_claude_run_continues_its_session_as_a_new_linked_runtime(
    fake_bin,
    launch_args,
    capsys,
):
    paused = paused_run(fake_bin, launch_args)
    (fake_bin / "limit_cleared").write_text("")
    call_command("resume_runtime", paused.handle, "--by", "alice")
    assert "resumed by alice" in capsys.readouterr().out
    paused.refresh_from_db()
    successor = Runtime.objects.get(resumed_from=paused)
    assert (paused.runtime_class, paused.class_reason) == ("resumed", "resumed")
    event = paused.events.order_by("-at", "-pk").first()
    assert (event.to_class, event.source, event.observed["by"]) == ("resumed", "controller", "alice")
    assert f"resumed by alice as {successor.handle}" in event.message
    assert (successor.resume_count, successor.cwd, successor.profile) == (1, paused.cwd, paused.profile)
    assert (
        Ticket.objects.get(pk=paused.ticket_id).note
        == f"{paused.handle} resumed by alice as {successor.handle} (resume 1)"
    )
    assert wait_for(lambda: "--resume" in model_calls(fake_bin)[-1]["argv"])
    worker_call = model_calls(fake_bin)[-1]
    argv = worker_call["argv"]
    assert argv[argv.index("--resume") + 1] == "0b7f3a52-sess-1" and worker_call["stdin"] == "continue\n"
    successor = finish(successor)
    assert (successor.runtime_class, successor.exit_outcome) == ("exited", "completed")
    assert successor.agent_session_id == "0b7f3a52-sess-1"


def test_resuming_a_codex_run_uses_exec_resume_with_its_thread(fake_bin, launch_args):
    paused = paused_run(fake_bin, launch_args, provider="codex", model="gpt-limit", name="codex-limited")
    assert paused.agent_session_id == "019a6c1e-th-1"
    (fake_bin / "limit_cleared").write_text("")
    successor = resume.resume(paused, by="bob")
    assert wait_for(lambda: "resume" in model_calls(fake_bin)[-1]["argv"])
    assert model_calls(fake_bin)[-1]["argv"][-3:] == ["resume", "019a6c1e-th-1", "-"]
    successor = finish(successor)
    assert (successor.exit_outcome, successor.agent_session_id) == ("completed", "019a6c1e-th-1")


def test_a_second_limit_after_a_resume_pauses_the_new_run_again(fake_bin, launch_args):
    paused = paused_run(fake_bin, launch_args)
    successor = finish(resume.resume(paused, by="bob"))
    assert (successor.runtime_class, successor.resume_count, successor.resumed_from_id) == (
        "usage-limited",
        1,
        paused.pk,
    )
    assert successor.resumes_at is not None and successor.exit_outcome == ""


def test_a_run_is_resumed_once_and_only_when_paused(fake_bin, launch_args):
    paused = paused_run(fake_bin, launch_args)
    successor = resume.resume(paused, by="bob")
    with pytest.raises(CommandError, match=f"already resumed as {successor.handle}"):
        call_command("resume_runtime", paused.handle)
    with pytest.raises(CommandError, match="only a usage-limited run is resumed"):
        call_command("resume_runtime", make_runtime(runtime_class="tmux-live").handle)
    assert Runtime.objects.filter(resumed_from=paused).count() == 1


def test_auto_resume_is_scheduled_at_the_reset_on_the_worker_host_and_capped(
    fake_bin, launch_args, settings, django_capture_on_commit_callbacks
):
    settings.CONTROLROOM = {**settings.CONTROLROOM, "MAX_RESUMES": 1, "RESUME_JITTER": 0.0}
    with django_capture_on_commit_callbacks(execute=True):  # the ledger schedules once its pause commits
        paused = paused_run(fake_bin, launch_args, auto_resume=True)
    schedule = Schedule.objects.get(name=f"auto-resume:{paused.pk}")
    assert (schedule.func, schedule.args, schedule.cluster) == (
        "runtimes.tasks.auto_resume",
        f"({paused.pk},)",
        paused.host,
    )
    assert (schedule.schedule_type, schedule.next_run) == (Schedule.ONCE, paused.resumes_at)
    assert resume.auto_resume(paused.pk).startswith("resumed")
    assert resume.auto_resume(paused.pk) == f"runtime {paused.pk} is resumed: nothing to resume"  # runs once
    with django_capture_on_commit_callbacks(execute=True):
        successor = finish(Runtime.objects.get(resumed_from=paused))
    # The resumed run hit the limit again: at the cap it waits for a person instead of looping.
    assert successor.runtime_class == "usage-limited"
    assert not Schedule.objects.filter(name=f"auto-resume:{successor.pk}").exists()
    ticket = Ticket.objects.get(pk=successor.ticket_id)
    assert ticket.note == f"{successor.handle}: usage limit again after 1 resumes; resume it by hand"
    later = successor.resumes_at + timedelta(seconds=settings.CONTROLROOM["USAGE_LIMIT_GRACE"] + 1)
    assert Runtime.objects.needs_attention(later).filter(pk=successor.pk).exists()


def test_runs_of_one_account_hitting_the_same_limit_resume_spread_out(settings):
    settings.CONTROLROOM = {**settings.CONTROLROOM, "AUTO_RESUME": True, "RESUME_SPREAD": 90.0, "RESUME_JITTER": 0.0}
    reset = timezone.now() + timedelta(hours=2)
    runs = [
        make_runtime(profile="opus", runtime_class="usage-limited", resumes_at=reset, ended_at=timezone.now())
        for _ in range(3)
    ]
    other = make_runtime(profile="sonnet", runtime_class="usage-limited", resumes_at=reset, ended_at=timezone.now())
    resume.schedule_auto_resumes([r.pk for r in [*runs, other]])
    times = [Schedule.objects.get(name=f"auto-resume:{r.pk}").next_run for r in runs]
    assert times == [reset, reset + timedelta(seconds=90), reset + timedelta(seconds=180)]
    assert Schedule.objects.get(name=f"auto-resume:{other.pk}").next_run == reset  # another account
    resume.schedule_auto_resumes([runs[0].pk])  # by name: scheduling twice changes nothing
    assert Schedule.objects.filter(name__startswith="auto-resume:").count() == 4


def test_no_auto_resume_is_scheduled_when_neither_the_setting_nor_the_profile_asks(
    fake_bin, launch_args, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        paused_run(fake_bin, launch_args)
    assert callbacks  # the ledger did hand the pause over
    assert not Schedule.objects.filter(name__startswith="auto-resume:").exists()
    assert LivenessEvent.objects.filter(to_class="usage-limited").count() == 1
