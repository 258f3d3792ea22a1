"""The ingest API over the real HTTP stack (pytest-django's live server + urllib), with real tmux
panes and real processes, posting the CLIs' real payload shapes."""

import json
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import psutil
import pytest
from django.core.management import call_command
from django.db import DataError, OperationalError
from django.utils import timezone

from runtimes import reconcile
from runtimes.intake import batch, reports, tokens
from runtimes.models import ApiToken, LivenessEvent, Runtime, RuntimeClass
from tests.conftest import make_runtime, make_ticket, start_session
from tickets.models import Comment

pytestmark = pytest.mark.django_db(transaction=True)

HOST = "test-host"


@pytest.fixture(autouse=True)
def _this_host(settings):
    settings.CONTROLROOM_HOST = HOST


def call(server, method, path, token=None, body=None, raw=None, headers=None):
    """(status, JSON body) of one real HTTP request."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(f"{server.url}/api/v1{path}", data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def token_for(**scope):
    return tokens.mint("test", **scope)[1]


def claude_input(event, **fields):
    """A Claude Code hook input as Claude sends it (every input has these four fields)."""
    return {"session_id": "0a1b2c3d-4e5f-4a6b-8c9d-0e1f2a3b4c5d", "transcript_path": "/home/u/.claude/projects/x.jsonl",
            "cwd": "/work/repo", "hook_event_name": event, "permission_mode": "default", **fields}  # fmt: skip


@pytest.fixture
def live_pane(tmux, tmux_socket):
    """A real tmux worker pane, tmux-live on this host."""

    def build(**overrides):
        runtime = make_runtime(host=HOST, tmux_socket=tmux_socket, **overrides)
        start_session(tmux, runtime.tmux_target, "sleep", "600")
        reconcile.reconcile(HOST)
        runtime.refresh_from_db()
        assert runtime.runtime_class == RuntimeClass.TMUX_LIVE
        return runtime

    return build


def ledger(runtime):
    return list(
        LivenessEvent.objects.filter(runtime=runtime).order_by("at", "pk").values_list("source", "to_class", "reason")
    )


# --- Tokens and errors ---------------------------------------------------------------------------


def test_create_api_token_prints_the_token_alone_on_its_last_line_and_stores_only_its_hash(capsys):
    call_command("create_api_token", "hermes-h1", "--role", "validator", "--host", "h1")
    token = capsys.readouterr().out.strip().splitlines()[-1]
    row = ApiToken.objects.get()
    assert token.startswith("crt_") and len(token) > 40
    assert (row.name, row.role, row.host, row.token_hash) == ("hermes-h1", "validator", "h1", tokens.hash_token(token))
    assert token not in json.dumps(list(ApiToken.objects.values()), default=str)


def test_a_missing_unknown_or_revoked_token_is_401_and_writes_nothing(live_server):
    runtime = make_runtime(host=HOST)
    token = token_for()
    tokens.revoke(ApiToken.objects.all())
    for bearer in (None, "crt_not-a-token", token):
        status, body = call(live_server, "POST", f"/runtimes/{runtime.pk}/claude-hook", bearer,
                            claude_input("PreToolUse", tool_name="Bash"))  # fmt: skip
        assert status == 401 and "token" in body["error"]
    assert runtime.events.count() == 0


def test_bad_input_gets_the_right_4xx_as_json_and_writes_nothing(live_server, settings):
    runtime = make_runtime(host=HOST)
    token = token_for()
    path = f"/runtimes/{runtime.pk}/claude-hook"
    assert call(live_server, "POST", path, token, raw=b"{not json")[0] == 400
    assert call(live_server, "POST", path, token, body=[1, 2])[0] == 400
    assert call(live_server, "POST", path, token, body={"session_id": "x"})[0] == 400  # no hook_event_name
    assert call(live_server, "POST", "/runtimes/999999/claude-hook", token, claude_input("Stop"))[0] == 404
    too_big = 2**63  # no database column holds it: 404 too, not a 500 from the query
    report = {"exit_code": 0, "reason": "exited", **claude_input("Stop")}
    for endpoint in ("claude-hook", "codex-notify", "exit"):
        answer = call(live_server, "POST", f"/runtimes/{too_big}/{endpoint}", token, report)
        assert answer == (404, {"error": f"no runtime {too_big}"})
    assert call(live_server, "GET", f"/runtimes/{too_big}", token)[0] == 404
    settings.CONTROLROOM = {**settings.CONTROLROOM, "API_MAX_BODY": 1000}
    status, body = call(live_server, "POST", path, token, claude_input("Stop", last_assistant_message="x" * 2000))
    assert status == 413 and "CONTROLROOM_API_MAX_BODY" in body["error"]
    assert call(live_server, "POST", "/runtimes", token, {"ticket": "MC-1", "handle": "h", "pid": "x"})[0] == 400
    assert runtime.events.count() == 0 and Runtime.objects.count() == 1
    runtime.refresh_from_db()
    assert runtime.reported_at is None


def test_a_token_bound_to_one_host_or_one_runtime_is_refused_elsewhere(live_server):
    mine, theirs = make_runtime(host=HOST), make_runtime(host="other-host")
    host_token, runtime_token = token_for(host=HOST), token_for(runtime=mine)
    hook = claude_input("PreToolUse", tool_name="Bash")
    assert call(live_server, "POST", f"/runtimes/{theirs.pk}/claude-hook", host_token, hook)[0] == 403
    assert call(live_server, "POST", f"/runtimes/{theirs.pk}/claude-hook", runtime_token, hook)[0] == 403
    assert call(live_server, "GET", f"/runtimes/{theirs.pk}", runtime_token)[0] == 403
    assert call(live_server, "POST", f"/runtimes/{mine.pk}/claude-hook", runtime_token, hook)[0] == 200
    registration = {"ticket": mine.ticket.key, "handle": "hermes-bg:proc_000000000001", "pid": 1, "host": "other"}
    assert call(live_server, "POST", "/runtimes", host_token, registration)[0] == 403
    listed = call(live_server, "GET", "/runtimes", host_token)[1]
    assert [row["id"] for row in listed] == [mine.pk]


# --- Hooks become truth ---------------------------------------------------------------------------


def test_a_permission_prompt_makes_a_live_pane_waiting_input_and_work_makes_it_live_again(live_server, live_pane):
    runtime = live_pane()
    token = token_for(runtime=runtime)
    path = f"/runtimes/{runtime.pk}/claude-hook"
    prompt = claude_input("Notification", message="Claude needs your permission to use Bash",
                          notification_type="permission_prompt")  # fmt: skip
    status, body = call(live_server, "POST", path, token, prompt)
    assert status == 200
    assert (body["runtime_class"], body["reason"], body["needs_attention"]) == (
        "waiting-input",
        "permission-prompt",
        True,
    )
    assert Runtime.objects.needs_attention().filter(pk=runtime.pk).exists()
    # The same report again changes nothing; a reconcile pass keeps the worker waiting.
    assert call(live_server, "POST", path, token, prompt)[1]["changed"] is False
    reconcile.reconcile(HOST)
    events = ledger(runtime)
    assert events[-1] == ("hook", "waiting-input", "permission-prompt") and len(events) == 2
    observed = runtime.events.get(to_class="waiting-input").observed
    assert observed["notification_type"] == "permission_prompt" and observed["hook_event_name"] == "Notification"

    status, body = call(live_server, "POST", path, token, claude_input("PreToolUse", tool_name="Bash",
                                                                       tool_input={"command": "ls"}))  # fmt: skip
    assert (body["runtime_class"], body["needs_attention"], body["changed"]) == ("tmux-live", False, True)
    assert ledger(runtime)[-1][:2] == ("hook", "tmux-live")


def test_an_idle_prompt_is_waiting_input_that_needs_attention_only_after_its_grace(live_server, live_pane, settings):
    runtime = live_pane()
    token = token_for(runtime=runtime)
    idle = claude_input("Notification", message="Claude is waiting for your input", notification_type="idle_prompt")
    body = call(live_server, "POST", f"/runtimes/{runtime.pk}/claude-hook", token, idle)[1]
    assert (body["runtime_class"], body["reason"], body["needs_attention"]) == ("waiting-input", "idle-prompt", False)
    later = timezone.now() + timedelta(seconds=settings.CONTROLROOM["IDLE_PROMPT_GRACE"] + 1)
    assert Runtime.objects.needs_attention(later).filter(pk=runtime.pk).exists()


def test_a_rate_limit_stop_failure_is_usage_limited_not_a_failure(live_server, live_pane, settings):
    runtime = live_pane()
    token = token_for(runtime=runtime)
    failure = claude_input("StopFailure", error="rate_limit", last_assistant_message="")
    body = call(live_server, "POST", f"/runtimes/{runtime.pk}/claude-hook", token, failure)[1]
    assert (body["runtime_class"], body["reason"], body["needs_attention"]) == ("usage-limited", "usage-limit", False)
    runtime.refresh_from_db()
    pause = settings.CONTROLROOM["USAGE_LIMIT_PAUSE"]
    assert abs((runtime.resumes_at - runtime.reported_at).total_seconds() - pause) < 1
    assert runtime.ticket.failure_reason == "" and runtime.exit_outcome == ""
    past = runtime.resumes_at + timedelta(seconds=settings.CONTROLROOM["USAGE_LIMIT_GRACE"])
    assert Runtime.objects.needs_attention(past).filter(pk=runtime.pk).exists()
    assert not Runtime.objects.needs_attention(runtime.resumes_at).filter(pk=runtime.pk).exists()


def test_a_session_end_from_a_worker_that_is_gone_harvests_it_at_once(live_server, live_pane, tmux):
    runtime = live_pane()
    token = token_for(runtime=runtime)
    tmux.cmd("kill-session", "-t", runtime.tmux_target)
    body = call(live_server, "POST", f"/runtimes/{runtime.pk}/claude-hook", token,
                claude_input("SessionEnd", reason="other"))[1]  # fmt: skip
    assert body["runtime_class"] in ("tmux-missing", "exited")
    assert ledger(runtime)[-1][0] == "hook"


def test_codex_notify_and_a_codex_permission_hook_are_reports_too(live_server, live_pane):
    runtime = live_pane(provider="codex")
    token = token_for(runtime=runtime)
    path = f"/runtimes/{runtime.pk}/codex-notify"
    permission = {"session_id": "s", "turn_id": "t", "transcript_path": "/tmp/t", "cwd": "/w",
                  "hook_event_name": "PermissionRequest", "model": "gpt-5.5", "tool_name": "shell"}  # fmt: skip
    assert call(live_server, "POST", path, token, permission)[1]["runtime_class"] == "waiting-input"
    notify = {"type": "agent-turn-complete", "thread-id": "019a", "turn-id": "1", "cwd": "/w",
              "client": "codex_exec", "input-messages": ["Fix it"], "last-assistant-message": "Done."}  # fmt: skip
    assert call(live_server, "POST", path, token, notify)[1]["runtime_class"] == "tmux-live"
    assert call(live_server, "POST", path, token, {"thread-id": "x"})[0] == 400


# --- Runtimes, exits, activity, comments ---------------------------------------------------------


def test_registering_an_external_process_is_idempotent_and_a_new_pid_is_a_new_run(live_server, sleeper):
    ticket = make_ticket()
    token = token_for(host=HOST)
    first, second = sleeper(), sleeper()
    create = psutil.Process(first.pid).create_time()
    payload = {"ticket": ticket.key, "handle": "hermes-bg:proc_1e85762558ea", "kind": "process",
               "provider": "hermes", "pid": first.pid, "pid_create_time": create, "cwd": "/work"}  # fmt: skip
    status, body = call(live_server, "POST", "/runtimes", token, payload)
    assert status == 201 and body["runtime_class"] == "pending"
    assert call(live_server, "POST", "/runtimes", token, payload) == (200, {**body, "changed": False})
    reconcile.reconcile(HOST)
    assert Runtime.objects.get(pk=body["id"]).runtime_class == "process-live"

    again = {**payload, "pid": second.pid, "pid_create_time": psutil.Process(second.pid).create_time()}
    status, new = call(live_server, "POST", "/runtimes", token, again)
    assert status == 201 and new["id"] != body["id"]
    old = Runtime.objects.get(pk=body["id"])
    assert (old.runtime_class, old.class_reason, old.pid) == ("exited", "superseded", first.pid)
    assert Runtime.objects.filter(handle=payload["handle"]).count() == 2
    listed = call(live_server, "GET", f"/runtimes?handle={payload['handle']}&runtime_class=pending", token)[1]
    assert [row["id"] for row in listed] == [new["id"]]


def test_a_runtime_reads_back_with_its_ledger(live_server, live_pane):
    runtime = live_pane()
    token = token_for()
    status, body = call(live_server, "GET", f"/runtimes/{runtime.pk}", token)
    assert status == 200
    assert (body["runtime_class"], body["needs_attention"], body["ticket"]) == ("tmux-live", False, runtime.ticket.key)
    assert [row["to_class"] for row in body["ledger"]] == ["tmux-live"]
    attention = call(live_server, "GET", "/runtimes?needs_attention=true", token)[1]
    assert attention == []


def test_a_launcher_reports_an_exit_once(live_server, sleeper):
    process = sleeper()
    runtime = make_runtime(host=HOST, kind="process", pid=process.pid, provider="hermes",
                           runtime_class=RuntimeClass.PROCESS_LIVE)  # fmt: skip
    token = token_for(host=HOST)
    path = f"/runtimes/{runtime.pk}/exit"
    body = call(live_server, "POST", path, token, {"exit_code": 3, "reason": "exited", "output": "boom"})[1]
    assert (body["runtime_class"], body["needs_attention"]) == ("exited", True)
    runtime.refresh_from_db()
    assert (runtime.exit_code, runtime.exit_outcome) == (3, "failed")
    assert call(live_server, "POST", path, token, {"exit_code": 0})[1]["changed"] is False
    assert ledger(runtime)[-1] == ("api", "exited", "exit-status")
    assert call(live_server, "POST", path, token, {"reason": "exited"})[0] == 400


def test_a_killed_report_is_a_controller_kill_without_a_banner(live_server):
    runtime = make_runtime(host=HOST, kind="process", runtime_class=RuntimeClass.PROCESS_LIVE)
    body = call(live_server, "POST", f"/runtimes/{runtime.pk}/exit", token_for(), {"exit_code": -15,
                                                                                  "reason": "killed"})[1]  # fmt: skip
    assert (body["runtime_class"], body["needs_attention"]) == ("killed-by-controller", False)


def test_console_activity_through_the_api_wakes_an_idle_console(live_server):
    console = make_runtime(kind="websocket", host=HOST, runtime_class=RuntimeClass.WEBSOCKET_IDLE)
    body = call(live_server, "POST", f"/runtimes/{console.pk}/activity", token_for(), {})[1]
    assert (body["runtime_class"], body["changed"]) == ("websocket-active", True)
    tmux_row = make_runtime(host=HOST)
    assert call(live_server, "POST", f"/runtimes/{tmux_row.pk}/activity", token_for(), {})[0] == 400


def test_comments_land_on_the_ticket_and_only_a_validator_may_post_validator_comments(live_server):
    ticket = make_ticket()
    reporter, validator = token_for(), token_for(role=ApiToken.Role.VALIDATOR)
    path = f"/tickets/{ticket.key}/comments"
    body = {"kind": "controller", "author": "controller", "body": "Coder gate dispatched to claude_opus."}
    status, created = call(live_server, "POST", path, reporter, body)
    assert status == 201 and created["kind"] == "controller"
    verdict = {"kind": "validator", "author": "qa", "body": "Validator gate complete: APPROVED"}
    assert call(live_server, "POST", path, reporter, verdict)[0] == 403
    assert call(live_server, "POST", path, validator, verdict)[0] == 201
    assert call(live_server, "POST", "/tickets/MC-0/comments", reporter, body)[0] == 404
    assert call(live_server, "POST", path, reporter, {"kind": "robot", "body": "x"})[0] == 400
    secret = {"kind": "human", "body": "key is sk-ant-api03-abcdefghijklmnopqrstuv"}
    assert call(live_server, "POST", path, reporter, secret)[0] == 201
    assert list(Comment.objects.filter(ticket=ticket).values_list("kind", flat=True)) == ["human", "validator",
                                                                                          "controller"]  # fmt: skip
    assert "sk-ant" not in Comment.objects.filter(kind="human").get().body


def test_the_openapi_docs_are_served(live_server):
    with urllib.request.urlopen(f"{live_server.url}/api/v1/openapi.json", timeout=10) as response:
        schema = json.loads(response.read())
    assert "/api/v1/runtimes/{runtime_id}/claude-hook" in schema["paths"]
    with urllib.request.urlopen(f"{live_server.url}/api/v1/docs", timeout=10) as response:
        assert response.status == 200


def test_tokens_are_listed_and_revoked_in_the_admin_and_a_revoked_token_stops_working(live_server, admin_client):
    runtime = make_runtime(host=HOST)
    row, token = tokens.mint("hermes-h1", host=HOST)
    page = admin_client.get("/admin/runtimes/apitoken/")
    assert page.status_code == 200 and row.prefix in page.content.decode() and token not in page.content.decode()
    hook = claude_input("PreToolUse", tool_name="Bash")
    assert call(live_server, "POST", f"/runtimes/{runtime.pk}/claude-hook", token, hook)[0] == 200
    admin_client.post("/admin/runtimes/apitoken/", {"action": "revoke", "_selected_action": [row.pk]})
    row.refresh_from_db()
    assert row.revoked_at is not None and row.last_used_at is not None
    assert call(live_server, "POST", f"/runtimes/{runtime.pk}/claude-hook", token, hook)[0] == 401


def test_a_report_token_is_taken_from_the_cache_yet_refused_the_moment_it_is_revoked_or_deleted(live_server):
    hook = claude_input("PreToolUse", tool_name="Bash")
    for end in ("revoke", "delete"):
        runtime = make_runtime(host=HOST)
        row, token = tokens.mint(f"cached-{end}", host=HOST)
        assert call(live_server, "POST", f"/runtimes/{runtime.pk}/claude-hook", token, hook)[0] == 200
        assert tokens.CACHE.get(row.token_hash) is not None  # the next report costs no token query
        if end == "revoke":
            tokens.revoke(ApiToken.objects.filter(pk=row.pk))  # a plain UPDATE: nothing tells the cache
        else:
            ApiToken.objects.filter(pk=row.pk).delete()
        before = runtime.events.count()
        prompt = claude_input("Notification", notification_type="permission_prompt", message="Allow?")
        status, body = call(live_server, "POST", f"/runtimes/{runtime.pk}/claude-hook", token, prompt)
        assert (status, body["error"]) == (401, tokens.UNAUTHORIZED)
        assert runtime.events.count() == before  # nothing written
        assert tokens.CACHE.get(row.token_hash) is None  # and it left the cache
        assert call(live_server, "POST", f"/runtimes/{runtime.pk}/claude-hook", token, hook)[0] == 401


def test_the_report_token_cache_is_bounded():
    cache = tokens._Cache(size=3)
    for n in range(5):
        cache.put(f"hash-{n}", n)
    cache.get("hash-2")  # used: the least recently used leave first
    cache.put("hash-5", 5)
    assert [cache.get(f"hash-{n}") for n in range(6)] == [None, None, 2, None, 4, 5]


def test_a_report_that_waited_too_long_for_its_batch_is_a_503_and_writes_nothing(live_server, monkeypatch):
    runtime = make_runtime(runtime_class=RuntimeClass.TMUX_LIVE)
    _, token = tokens.mint("busy")
    entered, release = threading.Event(), threading.Event()
    real_run = reports.REPORTS.run_batch

    def slow_run(items):  # the batch being written holds the runtime past the wait limit
        entered.set()
        assert release.wait(10)
        return real_run(items)

    monkeypatch.setattr(reports, "REPORTS", batch.GroupCommit(slow_run, key=reports.REPORTS.key, wait=0.3))
    path = f"/runtimes/{runtime.pk}/claude-hook"
    hook = claude_input("Notification", notification_type="permission_prompt")
    first = ThreadPoolExecutor(1).submit(call, live_server, "POST", path, token, hook)
    assert entered.wait(10)
    try:
        status, answer = call(live_server, "POST", path, token, hook)
    finally:
        release.set()
    assert status == 503 and "nothing was written" in answer["error"]
    assert first.result(10)[0] == 200
    assert runtime.events.count() == 1  # the first report's; the refused one wrote nothing


def test_a_report_carrying_a_lone_surrogate_is_recorded_with_a_replacement_character(live_server):
    # JSON "\ud800" is valid JSON but no character: PostgreSQL refuses it in jsonb. Kept as U+FFFD.
    runtime = make_runtime(runtime_class=RuntimeClass.TMUX_LIVE)
    _, token = tokens.mint("surrogate")
    hook = claude_input("Notification", notification_type="permission_prompt", message="May I \ud800 run it?")
    status, answer = call(live_server, "POST", f"/runtimes/{runtime.pk}/claude-hook", token, hook)
    assert (status, answer["runtime_class"]) == (200, "waiting-input")
    observed = json.dumps(runtime.events.get().observed, ensure_ascii=False)
    assert "\ufffd" in observed and "\ud800" not in observed


def report_refused_with(error, live_server, monkeypatch):
    """Post a report to a database that refuses its batch with `error`: (the runtime, status, answer)."""
    runtime = make_runtime(runtime_class=RuntimeClass.TMUX_LIVE)
    _, token = tokens.mint("refused")

    def refused(items):
        raise error

    monkeypatch.setattr(reports, "REPORTS", batch.GroupCommit(refused, key=reports.REPORTS.key))
    hook = claude_input("Notification", notification_type="permission_prompt")
    status, answer = call(live_server, "POST", f"/runtimes/{runtime.pk}/claude-hook", token, hook)
    return runtime, status, answer


def test_a_report_the_database_refuses_is_a_clear_503_that_wrote_nothing(live_server, monkeypatch):
    error = OperationalError("could not connect to server")
    runtime, status, answer = report_refused_with(error, live_server, monkeypatch)
    assert status == 503 and "nothing was written" in answer["error"]
    assert "could not connect" not in answer["error"]  # the details go to the log, not to the reporter
    assert not runtime.events.exists()


def test_a_report_the_database_refuses_for_itself_is_a_500_that_does_not_ask_to_send_it_again(live_server, monkeypatch):
    error = DataError("invalid input syntax for type json")
    runtime, status, answer = report_refused_with(error, live_server, monkeypatch)
    assert status == 500 and "nothing was written" in answer["error"] and "send it again" not in answer["error"]
    assert "invalid input" not in answer["error"]
    assert not runtime.events.exists()
