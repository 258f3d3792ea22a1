"""Workers launched before `exec_worker.py` moved to `runtimes/runs/` still run the old path."""

import shutil
import sys
from pathlib import Path

import pytest
from django.core.management import call_command

import runtimes.runs.exec_worker
from runtimes.models import RuntimeClass
from runtimes.probes.processes import create_time_of
from tests.conftest import make_runtime, pane_is_dead, start_session, wait_for
from tickets.models import Ticket

pytestmark = pytest.mark.django_db


def launch_with_old_wrapper(tmux, tmux_socket, fake_bin, tmp_path, session, model, old_wrapper):
    prompt = tmp_path / f"{session}.prompt"
    prompt.write_text("Fix the bug.")
    log = tmp_path / f"{session}.jsonl"
    cli = [str(fake_bin / "claude"), "-p", "--output-format", "stream-json", "--verbose", "--model", model]
    pid = start_session(tmux, session, sys.executable, str(old_wrapper), "--stdin", str(prompt), "--stdout", str(log),
                        "--", *cli, mark=f"mark-{session}")  # fmt: skip
    return make_runtime(handle=f"tmux:{session}", tmux_socket=tmux_socket, tmux_target=session, pid=pid,
                        launch_token=f"mark-{session}", pid_create_time=create_time_of(pid),
                        provider="claude", model=model, output_path=str(log),
                        runtime_class=RuntimeClass.TMUX_LIVE)  # fmt: skip


def test_a_worker_launched_before_the_move_is_harvested_and_stopped_after_it(tmux, tmux_socket, fake_bin, tmp_path):
    # The wrapper as it stood at the old path `runtimes/exec_worker.py`; the move then removes it.
    old_wrapper = tmp_path / "old-checkout" / "runtimes" / "exec_worker.py"
    old_wrapper.parent.mkdir(parents=True)
    shutil.copy(Path(runtimes.runs.exec_worker.__file__), old_wrapper)
    finished = launch_with_old_wrapper(tmux, tmux_socket, fake_bin, tmp_path, "cr-old-a", "claude-sonnet-4-6",
                                       old_wrapper)  # fmt: skip
    running = launch_with_old_wrapper(tmux, tmux_socket, fake_bin, tmp_path, "cr-old-b", "claude-hang", old_wrapper)
    assert wait_for(lambda: pane_is_dead(tmux, "cr-old-a", status_reported=False))
    assert wait_for(lambda: Path(f"{finished.output_path}.exit").exists())
    shutil.rmtree(old_wrapper.parent.parent)

    call_command("harvest_runtime", finished.handle, "--host", finished.host)
    finished.refresh_from_db()
    assert (finished.runtime_class, finished.exit_outcome, finished.exit_code) == ("exited", "completed", 0)

    call_command("stop_worker", running.handle, "--by", "maria")
    running.refresh_from_db()
    assert running.runtime_class == RuntimeClass.KILLED_BY_CONTROLLER
    assert "cr-old-b" not in [s.session_name for s in tmux.sessions]
    assert Ticket.objects.get(pk=running.ticket_id).failure_reason == ""
