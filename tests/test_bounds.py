"""No input freezes or floods Control Room: any output log gives an outcome, reading is bounded,
prompt files are regular files of bounded size."""

import io
import json
import os
import subprocess
import sys
import threading

import pytest
from django.core.management import CommandError, call_command
from django.db import connections

from runtimes.models import Runtime, WorkerProfile
from runtimes.runs import harvest, outcomes
from runtimes.text import REDACTED, quote_tail, safe_text
from tests.clusters import ROOT
from tests.conftest import make_runtime, make_ticket, pane_is_dead, start_session, wait_for

OPEN_NESTING = '{"a":' * 100_000 + "\n"
CLOSED_NESTING = '{"a":' * 100_000 + "1" + "}" * 100_000 + "\n"
RESULT = json.dumps({"type": "result", "subtype": "success", "is_error": False, "num_turns": 2, "result": "DONE"})


@pytest.mark.parametrize("provider", ["claude", "codex"])
@pytest.mark.parametrize("nesting", [OPEN_NESTING, CLOSED_NESTING], ids=["open", "closed"])
def test_a_hundred_thousand_nested_objects_give_an_unparseable_outcome(provider, nesting):
    for raw in (nesting, nesting.encode()):
        outcome = outcomes.classify(provider, raw)
        assert (outcome.exit_outcome, outcome.reason) == ("failed", "unparseable-output")


def test_a_deeply_nested_line_does_not_hide_the_result_after_it():
    outcome = outcomes.classify_claude((CLOSED_NESTING + RESULT + "\n").encode())
    assert (outcome.exit_outcome, outcome.reason) == ("completed", "completed")


def test_a_log_larger_than_the_read_limit_is_read_from_its_tail_only(tmp_path):
    log = tmp_path / "huge.jsonl"
    with open(log, "wb") as out:
        out.truncate(3 * harvest.READ_LIMIT)  # a sparse run of NULs, then the result line
        out.seek(0, os.SEEK_END)
        out.write(b"\n" + RESULT.encode() + b"\n")
    raw = harvest.read_output(log)
    assert len(raw) == harvest.READ_LIMIT and raw.endswith(RESULT.encode() + b"\n")
    assert outcomes.classify_claude(raw).reason == "completed"


def test_random_bytes_give_an_unparseable_outcome_quoting_a_bounded_tail():
    raw = os.urandom(512 * 1024) + b"\n{not json}\n" + b"\xff" * 1000
    for provider in ("claude", "codex"):
        outcome = outcomes.classify(provider, raw)
        assert outcome.reason == "unparseable-output"
        assert len(outcome.message) <= outcomes.MAX_MESSAGE


def test_standard_input_is_read_to_its_end_but_only_its_tail_is_kept():
    stream = io.BytesIO(b"x" * (3 * harvest.READ_LIMIT) + b"\n" + RESULT.encode() + b"\n")
    raw = harvest.read_output_stream(stream)
    assert len(raw) == harvest.READ_LIMIT and raw.endswith(RESULT.encode() + b"\n")


def classify_output(*args, stdin=None):
    """The real command in its own process (a hang is a failure after 60 s, not a stuck suite)."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "controlroom.settings_test"}
    return subprocess.run(
        [sys.executable, "manage.py", "classify_output", *args], cwd=ROOT, env=env, input=stdin,
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip


def test_classify_output_reads_a_long_pipe_on_standard_input():
    done = classify_output("--provider", "claude", "-", stdin=b"y" * (2 * harvest.READ_LIMIT) + b"\n" + RESULT.encode())
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["reason"] == "completed"


@pytest.mark.parametrize("kind", ["fifo", "device", "directory"])
def test_classify_output_refuses_what_is_not_a_regular_file_at_once(tmp_path, kind):
    path = {"fifo": tmp_path / "fifo", "device": "/dev/zero", "directory": tmp_path}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    done = classify_output("--provider", "codex", str(path))
    assert done.returncode == 1
    what = {"fifo": "a FIFO", "device": "a character device", "directory": "a directory"}[kind]
    assert done.stderr.decode().strip().splitlines() == [
        f"CommandError: Cannot read {path}: it is {what}, not a regular file. "
        "Give a readable output log or - for stdin."
    ]


def test_long_text_is_redacted_before_it_is_cut_and_a_secret_at_the_cut_never_shows():
    secret = "sk-ant-api03-" + "S" * 40
    for cut_at in range(380, 420):
        text = "x " * (cut_at // 2) + secret + " more" * 2000
        safe = safe_text(text, limit=400)
        assert "SSSS" not in safe and len(safe) <= 400
    assert quote_tail("y" * 100_000 + f" key {secret}").endswith(f"{REDACTED}'")
    assert "SSSS" not in quote_tail(("z " * 5_000 + secret).encode())


def raised(kind, function, *args):
    """The exception of `kind` that function(*args) raised, as a list (empty when none)."""
    try:
        function(*args)
    except kind as error:
        return [error]
    finally:
        connections.close_all()
    return []


@pytest.mark.django_db(transaction=True)
class TestPromptFiles:
    @pytest.fixture
    def launch(self, fake_bin, tmp_path, tmux_socket, settings):
        ticket = make_ticket()
        WorkerProfile.objects.create(name="codex_default", provider="codex", model="gpt-5.5")

        def run(prompt_file):
            call_command("launch_worker", ticket.key, "--profile", "codex_default", "--cwd", str(tmp_path),
                         "--prompt-file", str(prompt_file), "--tmux-socket", tmux_socket)  # fmt: skip

        return run

    @pytest.mark.parametrize(
        ("kind", "words"),
        [("fifo", "it is a FIFO, not a regular file"), ("device", "it is a character device, not a regular file"),
         ("directory", "it is a directory, not a regular file")],
    )  # fmt: skip
    def test_a_prompt_file_that_is_not_a_regular_file_is_refused_before_anything_runs(
        self, launch, tmp_path, tmux, fake_bin, kind, words
    ):
        path = {"fifo": tmp_path / "fifo", "device": "/dev/zero", "directory": tmp_path}[kind]
        if kind == "fifo":
            os.mkfifo(path)
        errors = []
        reader = threading.Thread(target=lambda: errors.extend(raised(CommandError, launch, path)))
        reader.start()
        reader.join(timeout=60)
        if reader.is_alive() and kind == "fifo":
            with open(path, "wb"):  # unblock a reader stuck on the FIFO, then fail
                pass
            reader.join()
            pytest.fail("reading a FIFO prompt file blocked")
        assert [str(e) for e in errors] == [f"Cannot read --prompt-file {path}: {words}."]
        assert not Runtime.objects.exists() and not (fake_bin / "calls.jsonl").exists()
        assert tmux.cmd("list-sessions").returncode != 0

    def test_a_prompt_file_over_the_size_setting_is_refused(self, launch, tmp_path, settings, fake_bin):
        settings.CONTROLROOM = {**settings.CONTROLROOM, "MAX_PROMPT_BYTES": 1000}
        prompt = tmp_path / "prompt.txt"
        prompt.write_bytes(b"p" * 1001)
        with pytest.raises(CommandError, match="too large: it is larger than 1000 bytes .CONTROLROOM_MAX_PROMPT_BYTES"):
            launch(prompt)
        assert not Runtime.objects.exists() and not (fake_bin / "calls.jsonl").exists()
        prompt.write_bytes(b"p" * 1000)
        launch(prompt)
        assert Runtime.objects.count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize("content", [OPEN_NESTING.encode(), CLOSED_NESTING.encode(), os.urandom(256 * 1024)],
                         ids=["open-nesting", "closed-nesting", "random"])  # fmt: skip
def test_a_real_runtime_with_a_hostile_log_is_harvested_as_unparseable(tmux, tmux_socket, tmp_path, content, capsys):
    log = tmp_path / "output.jsonl"
    log.write_bytes(content)
    start_session(tmux, "cr-hostile", "sh", "-c", "exit 3")
    assert wait_for(lambda: pane_is_dead(tmux, "cr-hostile"))
    runtime = make_runtime(tmux_socket=tmux_socket, tmux_target="cr-hostile", handle="tmux:cr-hostile",
                           provider="claude", output_path=str(log), runtime_class="tmux-live")  # fmt: skip
    call_command("harvest_runtime", runtime.handle)
    runtime.refresh_from_db()
    assert (runtime.runtime_class, runtime.exit_outcome, runtime.class_reason) == (
        "exited",
        "failed",
        "unparseable-output",
    )
    assert runtime.exit_code == 3
