"""Hermes background processes mirrored from processes.json, with real processes."""

import json
import os
from pathlib import Path

import psutil
import pytest
from django.core.management import CommandError, call_command

from runtimes.intake import hermes
from runtimes.models import Runtime
from runtimes.reconcile import reconcile
from tests.conftest import make_ticket, wait_for

pytestmark = pytest.mark.django_db

HOST = "hermes-host"


@pytest.fixture(autouse=True)
def _this_host(settings):
    settings.CONTROLROOM_HOST = HOST


def start_ticks(pid):
    """Field 22 of /proc/<pid>/stat: what Hermes records as host_start_time on Linux."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[19])


def entry(process, session="proc_1e85762558ea", **overrides):
    """A processes.json entry in the shape Hermes writes (a real capture's fields)."""
    fields = {
        "session_id": session, "command": "pytest -q", "pid": process.pid, "pid_scope": "host",
        "host_start_time": start_ticks(process.pid), "cwd": "/work/repo", "started_at": 1795663519.22,
        "task_id": "default", "session_key": "agent:main:telegram:dm:42", "watcher_platform": "",
        "notify_on_complete": False, "watch_patterns": [],
    }  # fmt: skip
    fields.update(overrides)
    return fields


def write_home(path, entries):
    path.mkdir(parents=True, exist_ok=True)
    (path / "processes.json").write_text(json.dumps(entries))
    return path


def test_entries_are_parsed_into_identities_and_ticket_keys():
    text = json.dumps([
        {"session_id": "proc_0123456789ab", "pid": 11535, "pid_scope": "host", "host_start_time": 19281,
         "cwd": "/srv/MC-77-login", "started_at": 1795663519.22, "task_id": "default", "session_key": "x",
         "command": "make"},
        {"session_id": "proc_aaaaaaaaaaaa", "pid": 7, "pid_scope": "sandbox", "host_start_time": 1},
        {"session_id": "proc_nothex", "pid": 8, "pid_scope": "host", "host_start_time": 1},
        {"session_id": "proc_bbbbbbbbbbbb", "pid": "9", "pid_scope": "host", "host_start_time": 1},
        "garbage",
    ])  # fmt: skip
    entries, skipped = hermes.parse_entries(text, boot_time=1795644000.0, clock_ticks=100)
    assert [(e.handle, e.pid, e.create_time, e.ticket_keys) for e in entries] == [
        ("hermes-bg:proc_0123456789ab", 11535, 1795644000.0 + 192.81, ("MC-77",))
    ]
    assert [why for _, why in skipped] == [
        "pid_scope 'sandbox': not a host pid", "session_id is not proc_ + 12 hex digits", "no valid pid",
        "not an object",
    ]  # fmt: skip
    assert hermes.create_time_from_ticks(179566351922, 0, 100, linux=False) == 1795663519.22
    with pytest.raises(ValueError):
        hermes.parse_entries('{"not": "a list"}', 0, 100)


def test_a_running_hermes_process_is_mirrored_once_and_its_probe_decides_its_fate(sleeper, tmp_path):
    ticket = make_ticket(key="MC-77")
    process = sleeper()
    home = write_home(tmp_path / ".hermes", [entry(process, session_key="agent:main:MC-77")])
    call_command("import_hermes_processes", "--home", str(home))
    runtime = Runtime.objects.get(handle="hermes-bg:proc_1e85762558ea")
    assert (runtime.ticket, runtime.host, runtime.pid, runtime.kind, runtime.provider) == (
        ticket, HOST, process.pid, "process", "hermes"
    )  # fmt: skip
    assert abs(runtime.pid_create_time - psutil.Process(process.pid).create_time()) < 1.0
    assert list(runtime.events.values_list("source", "to_class")) == [("import", "pending")]

    call_command("import_hermes_processes", "--home", str(home))
    assert Runtime.objects.count() == 1 and runtime.events.count() == 1
    reconcile(HOST)
    assert Runtime.objects.get(pk=runtime.pk).runtime_class == "process-live"

    write_home(home, [])  # another Hermes sharing the home rewrote the file: not an exit
    call_command("import_hermes_processes", "--home", str(home))
    reconcile(HOST)
    assert Runtime.objects.get(pk=runtime.pk).runtime_class == "process-live"

    process.kill()
    process.wait()
    reconcile(HOST)
    assert Runtime.objects.get(pk=runtime.pk).runtime_class == "process-dead"


def test_the_ticket_comes_from_the_entry_else_from_the_ticket_option(sleeper, tmp_path, capsys):
    make_ticket(key="MC-5")
    fallback = make_ticket(key="OPS-12")
    first, second = sleeper(), sleeper()
    home = write_home(tmp_path / "h", [
        entry(first, "proc_aaaaaaaaaaa1", task_id="MC-5"),
        entry(second, "proc_aaaaaaaaaaa2", command="sleep 60", cwd="/tmp", session_key="none"),
    ])  # fmt: skip
    call_command("import_hermes_processes", "--home", str(home))
    assert "proc_aaaaaaaaaaa2: no ticket key" in capsys.readouterr().out
    assert Runtime.objects.get().ticket.key == "MC-5"
    call_command("import_hermes_processes", "--home", str(home), "--ticket", "OPS-12")
    assert Runtime.objects.get(handle="hermes-bg:proc_aaaaaaaaaaa2").ticket == fallback


def test_a_stale_entry_of_a_process_that_is_gone_is_not_mirrored(sleeper, tmp_path, capsys):
    make_ticket(key="MC-9")
    process = sleeper()
    stale = entry(process, session_key="MC-9")
    process.kill()
    process.wait()
    call_command("import_hermes_processes", "--home", str(write_home(tmp_path / "h", [stale])))
    assert "is not running" in capsys.readouterr().out and not Runtime.objects.exists()


def test_one_malformed_file_never_stops_the_reconcile_pass_or_the_other_homes(sleeper, tmp_path, settings):
    make_ticket(key="MC-3")
    process = sleeper()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "processes.json").write_text("[{not json")
    huge = tmp_path / "huge"
    huge.mkdir()
    (huge / "processes.json").write_text("[" + " " * hermes.MAX_FILE_BYTES + "]")
    good = write_home(tmp_path / "good", [entry(process, session_key="MC-3")])
    settings.CONTROLROOM = {**settings.CONTROLROOM, "HERMES_HOMES": [str(broken), str(huge), str(good)]}
    summary = reconcile(HOST)
    assert summary.errors == 2 and any("larger than" in m for m in summary.error_messages)
    assert Runtime.objects.get().runtime_class == "process-live"  # imported and probed in the same pass
    with pytest.raises(CommandError, match="could not be read"):
        call_command("import_hermes_processes", "--home", str(broken), "--home", str(good))


def test_bad_command_input_is_a_clear_error(tmp_path):
    with pytest.raises(CommandError, match="Not a directory"):
        call_command("import_hermes_processes", "--home", str(tmp_path / "missing"))
    with pytest.raises(CommandError, match="No ticket"):
        call_command("import_hermes_processes", "--home", str(tmp_path), "--ticket", "MC-404")


def test_hermes_create_time_matches_psutil_for_a_real_process(sleeper):
    process = sleeper()
    assert wait_for(lambda: os.path.exists(f"/proc/{process.pid}/stat"))
    ticks = start_ticks(process.pid)
    derived = hermes.create_time_from_ticks(ticks, psutil.boot_time(), os.sysconf("SC_CLK_TCK"))
    assert abs(derived - psutil.Process(process.pid).create_time()) < 0.05
