"""The ingest API (/api/v1/): thin views over runtimes.intake services, one bearer-token auth
class, JSON errors `{"error": "…"}` with the right 4xx, the body size checked before parsing."""

import json
import logging
from datetime import datetime
from typing import Literal

from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError
from django.db.models import BooleanField, ExpressionWrapper
from django.shortcuts import get_object_or_404
from django.utils import timezone
from ninja import Field, NinjaAPI, Schema
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.responses import Status
from ninja.security import HttpBearer

from runtimes import observe
from runtimes.intake import batch, hooks, reports, tokens
from runtimes.intake.activity import ActivityError, record_activity
from runtimes.models import ApiToken, LivenessEvent, Runtime, RuntimeClass
from tickets.models import Comment, Ticket

logger = logging.getLogger(__name__)
LEDGER_ROWS = 50
LIST_LIMIT = 500
# The largest primary key (a bigint column); a larger id names no runtime.
MAX_ID = 2**63 - 1


class TokenAuth(HttpBearer):
    """Checks the body size (413, before anything is parsed), then resolves the bearer token to
    its ApiToken (its scope) once; request.auth is that row."""

    def __call__(self, request):
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            raise HttpError(400, "Content-Length is not a number") from None
        limit = settings.CONTROLROOM["API_MAX_BODY"]
        if length > limit:
            raise HttpError(413, f"the body is {length} bytes; at most {limit} are taken (CONTROLROOM_API_MAX_BODY)")
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None  # never logged: the header may hold a token
        return self.authenticate(request, token.strip())

    def authenticate(self, request, token):
        return tokens.resolve(token)


class ReportTokenAuth(TokenAuth):
    """For hook and notify reports: the token from the process's cache (no query); its batch
    checks it is still live, in one query for the batch (runtimes.intake.tokens)."""

    def authenticate(self, request, token):
        return tokens.resolve(token, cached=True)


api = NinjaAPI(
    title="Control Room ingest API",
    version="1",
    urls_namespace="api-v1",
    auth=TokenAuth(),
    docs_url="/docs",
    description="Workers and launchers report themselves: runtimes, hooks, notify, activity, exits, comments.",
)


def _error(request, status, message):
    return api.create_response(request, {"error": message}, status=status)


@api.exception_handler(AuthenticationError)
def _unauthorized(request, exc):
    return _error(request, 401, tokens.UNAUTHORIZED)


@api.exception_handler(HttpError)
def _http_error(request, exc):
    message = str(exc)
    if message.startswith("Cannot parse request body"):
        message = "the body is not valid JSON"
    return _error(request, exc.status_code, message)


@api.exception_handler(ValidationError)
def _invalid(request, exc):
    first = exc.errors[0] if exc.errors else {}
    where = ".".join(str(part) for part in first.get("loc", ()) if part not in ("body", "payload"))
    return _error(request, 400, f"{where or 'body'}: {first.get('msg', 'invalid')}")


@api.exception_handler(DatabaseError)
def _database_error(request, exc):
    # The reporter gets a clear answer it can act on; the operator gets the traceback in the log.
    logger.exception("API %s %s: the database refused it", request.method, request.path)
    if isinstance(exc, OperationalError | InterfaceError):  # unreachable, restarting, busy: a moment later may do
        return _error(request, 503, "the database could not take this request; nothing was written: send it again")
    # A refusal of this request itself (a value, a constraint): sending it again would be refused again.
    return _error(request, 500, "the database refused this request; nothing was written (the server log says why)")


@api.exception_handler(batch.BatchTimeout)
def _batch_timeout(request, exc):
    return _error(request, 503, f"{exc}; nothing was written: send the report again")


@api.exception_handler(reports.IntakeError)
def _intake_error(request, exc):
    return _error(request, exc.status, str(exc))


# --- Schemas ------------------------------------------------------------------------------------


class RegisterIn(Schema):
    ticket: str = Field(max_length=20)
    handle: str = Field(min_length=1, max_length=200)
    kind: Literal["process", "websocket"] = "process"
    host: str = Field("", max_length=255)
    provider: Literal["claude", "codex", "hermes", "other"] = "other"
    pid: int | None = Field(None, ge=1, le=2**31)
    pid_create_time: float | None = Field(None, ge=0)
    cwd: str = Field("", max_length=1024)
    started_at: datetime | None = None
    model: str = Field("", max_length=100)


class ExitIn(Schema):
    exit_code: int | None = Field(None, ge=-(2**31), le=2**31)
    reason: Literal["exited", "killed", "lost"] = "exited"
    output: str = ""


class ActivityIn(Schema):
    at: datetime | None = None


class CommentIn(Schema):
    kind: Literal["controller", "validator", "human"]
    author: str = Field("", max_length=100)
    body: str = Field(min_length=1)


def _runtime_out(runtime, attention, events=None):
    data = {
        "id": runtime.pk,
        "ticket": runtime.ticket.key,
        "handle": runtime.handle,
        "host": runtime.host,
        "kind": runtime.kind,
        "provider": runtime.provider,
        "runtime_class": runtime.runtime_class,
        "reason": runtime.class_reason,
        "message": runtime.class_message,
        "needs_attention": attention,
        "pid": runtime.pid,
        "started_at": runtime.started_at,
        "class_changed_at": runtime.class_changed_at,
        "last_activity_at": runtime.last_activity_at,
        "reported_at": runtime.reported_at,
        "progress_at": runtime.progress_at,
        "resumes_at": runtime.resumes_at,
        "ended_at": runtime.ended_at,
        "exit_code": runtime.exit_code,
        "exit_outcome": runtime.exit_outcome,
    }
    if events is not None:
        data["ledger"] = [
            {"at": e.at, "from_class": e.from_class, "to_class": e.to_class, "reason": e.reason,
             "message": e.message, "source": e.source, "host": e.host, "observed": e.observed}
            for e in events
        ]  # fmt: skip
    return data


def _with_attention(queryset):
    expression = ExpressionWrapper(Runtime.needs_attention_q(timezone.now()), output_field=BooleanField())
    return queryset.select_related("ticket").annotate(attention=expression)


def _runtime_id(runtime_id):
    """The id, or a 404 for one no database column holds (a query with it would fail, not miss)."""
    if not 0 < runtime_id <= MAX_ID:
        raise HttpError(404, f"no runtime {runtime_id}")
    return runtime_id


def _writable_runtime(request, runtime_id):
    """The runtime the token may report for: 404 unknown, 403 out of its scope."""
    runtime = get_object_or_404(Runtime.objects.select_related("ticket"), pk=_runtime_id(runtime_id))
    if not tokens.may_write(request.auth, runtime):
        raise HttpError(403, tokens.out_of_scope(runtime_id))
    return runtime


def _json_body(request):
    try:
        return json.loads(request.body)
    except (ValueError, UnicodeDecodeError):
        raise HttpError(400, "the body is not valid JSON") from None


def _report_response(result, status=200):
    runtime = result.runtime
    attention = observe.attention_of(runtime, timezone.now())  # the runtime as just written, no query
    return Status(
        status,
        {
            "id": runtime.pk,
            "runtime_class": runtime.runtime_class,
            "reason": runtime.class_reason,
            "needs_attention": bool(attention),
            "changed": result.changed,
        },
    )


# --- Endpoints ----------------------------------------------------------------------------------


@api.post("/runtimes", response={200: dict, 201: dict})
def register_runtime(request, payload: RegisterIn):
    token = request.auth
    host = payload.host or token.host or settings.CONTROLROOM_HOST
    if not tokens.may_write_host(token, host):
        raise HttpError(403, f"this token may not register runtimes on host {host!r}")
    registration = reports.Registration(
        ticket=payload.ticket, handle=payload.handle, kind=payload.kind, host=host, provider=payload.provider,
        pid=payload.pid, pid_create_time=payload.pid_create_time, cwd=payload.cwd, started_at=payload.started_at,
        model=payload.model,
    )  # fmt: skip
    result = reports.register_runtime(registration)
    return _report_response(result, 201 if result.created else 200)


@api.get("/runtimes", response=list[dict])
def list_runtimes(
    request,
    host: str = "",
    handle: str = "",
    runtime_class: str = "",
    needs_attention: bool | None = None,
    limit: int = 100,
):
    token = request.auth
    if runtime_class and runtime_class not in RuntimeClass.values:
        raise HttpError(400, f"runtime_class must be one of {', '.join(RuntimeClass.values)}")
    rows = _with_attention(Runtime.objects.all())
    if token.runtime_id is not None:
        rows = rows.filter(pk=token.runtime_id)
    elif token.host:
        rows = rows.filter(host=token.host)
    if host:
        rows = rows.filter(host=host)
    if handle:
        rows = rows.filter(handle=handle)
    if runtime_class:
        rows = rows.filter(runtime_class=runtime_class)
    if needs_attention is not None:
        rows = rows.filter(attention=needs_attention)
    limit = max(1, min(limit, LIST_LIMIT))
    return [_runtime_out(r, r.attention) for r in rows[:limit]]


@api.get("/runtimes/{int:runtime_id}", response=dict)
def get_runtime(request, runtime_id: int):
    runtime = get_object_or_404(_with_attention(Runtime.objects.all()), pk=_runtime_id(runtime_id))
    if not tokens.may_write(request.auth, runtime):
        raise HttpError(403, f"this token may not read runtime {runtime_id}")
    events = LivenessEvent.objects.filter(runtime=runtime).order_by("-at", "-pk")[:LEDGER_ROWS]
    return _runtime_out(runtime, runtime.attention, list(events))


def _take_report(request, runtime_id, read):
    """Read the body, then record it; the token is checked live (401), the runtime looked up (404)
    and the token's scope checked (403) in the report's batch, where its row is read anyway."""
    _runtime_id(runtime_id)
    payload = _json_body(request)
    try:
        signal = read(payload, timezone.now())
    except hooks.ReportError as error:
        raise HttpError(400, str(error)) from None
    return _report_response(reports.record_signal(runtime_id, signal, LivenessEvent.Source.HOOK, token=request.auth))


@api.post("/runtimes/{int:runtime_id}/claude-hook", response={200: dict}, auth=ReportTokenAuth())
def claude_hook(request, runtime_id: int):
    """The body is a Claude Code hook's input JSON exactly as Claude sends it."""
    return _take_report(request, runtime_id, hooks.claude_hook)


@api.post("/runtimes/{int:runtime_id}/codex-notify", response={200: dict}, auth=ReportTokenAuth())
def codex_notify(request, runtime_id: int):
    """The body is Codex's notify JSON, or a Codex command hook's input."""
    return _take_report(request, runtime_id, hooks.codex_report)


@api.post("/runtimes/{int:runtime_id}/activity", response={200: dict})
def activity(request, runtime_id: int, payload: ActivityIn | None = None):
    runtime = _writable_runtime(request, runtime_id)
    try:
        newer = record_activity(runtime, at=payload.at if payload else None)
    except ActivityError as error:
        raise HttpError(400, str(error)) from None
    runtime.refresh_from_db(fields=["runtime_class", "class_reason"])
    return _report_response(reports.Result(runtime, changed=newer))


@api.post("/runtimes/{int:runtime_id}/exit", response={200: dict})
def exit_report(request, runtime_id: int, payload: ExitIn):
    runtime = _writable_runtime(request, runtime_id)
    if payload.reason == "exited" and payload.exit_code is None:
        raise HttpError(400, "exit_code: an exited run needs its exit code")
    return _report_response(reports.record_exit(runtime, payload.exit_code, payload.reason, payload.output))


@api.post("/tickets/{key}/comments", response={201: dict})
def post_comment(request, key: str, payload: CommentIn):
    token = request.auth
    ticket = get_object_or_404(Ticket, key=key)
    if payload.kind == Comment.Kind.VALIDATOR and token.role != ApiToken.Role.VALIDATOR:
        raise HttpError(403, "only a validator token may post validator comments")
    if token.runtime_id is not None and token.runtime.ticket_id != ticket.pk:
        raise HttpError(403, f"this token may only comment on its own run's ticket, not {key}")
    comment = reports.post_comment(ticket, payload.kind, payload.author or token.name, payload.body)
    return Status(201, {"id": comment.pk, "ticket": ticket.key, "kind": comment.kind, "created_at": comment.created_at})
