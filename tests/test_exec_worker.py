import signal
import subprocess
import sys

import psutil

from runtimes.liveness import EXITED, Observation
from runtimes.runs.exec_worker import read_exit_file
from tests.conftest import wait_for
from tests.test_liveness import classify, facts, pane

WRAPPER = [sys.executable, "runtimes/runs/exec_worker.py"]


def run_wrapped(tmp_path, *command, prompt=b"hello"):
    (tmp_path / "prompt").write_bytes(prompt)
    log = tmp_path / "out.log"
    argv = [*WRAPPER, "--stdin", str(tmp_path / "prompt"), "--stdout", str(log), "--", *command]
    return subprocess.Popen(argv, stderr=subprocess.PIPE), log


def test_the_cli_gets_the_prompt_on_stdin_and_its_stdout_goes_to_the_log(tmp_path):
    process, log = run_wrapped(
        tmp_path, sys.executable, "-c", "import sys; print(sys.stdin.read().upper()); sys.exit(3)"
    )
    assert process.wait() == 3
    assert log.read_text() == "HELLO\n"
    assert read_exit_file(log) == (3, None)
    assert oct(log.stat().st_mode & 0o777) == "0o600"


def test_the_wrapper_dies_by_the_cli_s_signal(tmp_path):
    process, log = run_wrapped(
        tmp_path, sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    )
    assert process.wait() == -signal.SIGKILL
    assert read_exit_file(log) == (None, 9)


def test_sigterm_to_the_wrapper_reaches_the_cli(tmp_path):
    process, log = run_wrapped(tmp_path, "sleep", "30")
    assert wait_for(lambda: psutil.Process(process.pid).children())  # the CLI runs
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=5) == -signal.SIGTERM
    assert read_exit_file(log) == (None, 15)


def test_a_missing_cli_is_exit_127_with_a_record(tmp_path):
    process, log = run_wrapped(tmp_path, "/nonexistent/claude")
    assert process.wait() == 127
    assert b"cannot start /nonexistent/claude" in process.stderr.read()
    assert read_exit_file(log) == (127, None)


def test_a_garbled_exit_record_is_ignored(tmp_path):
    log = tmp_path / "x.log"
    for content in ("", "[1]", '{"exit_code": "0"}', '{"exit_code": null}', "{"):
        (tmp_path / "x.log.exit").write_text(content)
        assert read_exit_file(log) is None


def test_a_dead_pane_without_tmux_status_settles_from_the_wrapper_record():
    dead = pane(dead=True)
    assert classify(facts(), Observation(pane=dead, exit_record=(4, None))).exit_code == 4
    assert classify(facts(), Observation(pane=dead, exit_record=(None, 15))).exit_signal == 15
    lost = classify(facts(), Observation(pane=dead, exit_record=(None, None)))
    assert (lost.runtime_class, lost.exit_code, lost.exit_signal) == (EXITED, None, None)
