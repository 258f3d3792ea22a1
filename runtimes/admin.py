from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.contrib.admin.views.main import ORDER_VAR, ChangeList
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import BooleanField, Case, Value, When
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html

from runtimes.console import humanize
from runtimes.console import views as console_views
from runtimes.intake import tokens
from runtimes.models import (
    ENDED_CLASSES,
    LIVE_CLASSES,
    ApiToken,
    LivenessEvent,
    ModelSmokeResult,
    ReconcilerHeartbeat,
    Runtime,
    RuntimeClass,
    WatcherHeartbeat,
    WorkerProfile,
)
from runtimes.runs import budgets, controller, resume

# Badge colours per class: green alive, grey quiet or settled, amber waiting, red needs a look.
BADGE_COLOURS = {
    RuntimeClass.PENDING: "#b7791f",
    RuntimeClass.TMUX_LIVE: "#2f855a",
    RuntimeClass.PROCESS_LIVE: "#2f855a",
    RuntimeClass.WEBSOCKET_ACTIVE: "#2f855a",
    RuntimeClass.WEBSOCKET_IDLE: "#718096",
    RuntimeClass.TMUX_MISSING: "#c53030",
    RuntimeClass.PROCESS_DEAD: "#c53030",
    RuntimeClass.EXITED: "#4a5568",
    RuntimeClass.KILLED_BY_CONTROLLER: "#4a5568",
    RuntimeClass.COMPLETED_BY_CONTROLLER: "#2b6cb0",
    RuntimeClass.NO_WORKER_EXPECTED: "#718096",
    RuntimeClass.UNKNOWN: "#9c4221",
    RuntimeClass.WAITING_INPUT: "#b7791f",
    RuntimeClass.USAGE_LIMITED: "#6b46c1",
    RuntimeClass.STALLED: "#c05621",
    RuntimeClass.RESUMED: "#4a5568",
}


def class_badge(runtime_class):
    return format_html(
        '<span class="cr-badge" style="background:{};color:#fff;padding:1px 6px;border-radius:8px;'
        'white-space:nowrap">{}</span>',
        BADGE_COLOURS.get(runtime_class, "#4a5568"),
        runtime_class,
    )


class RuntimeClassFilter(admin.SimpleListFilter):
    """Every runtime class, plus the groups operators ask for: live, ended, needs attention."""

    title = "runtime class"
    parameter_name = "runtime_class"
    GROUPS = {"live": ("live (any)", LIVE_CLASSES), "ended": ("ended (any)", ENDED_CLASSES)}

    def lookups(self, request, model_admin):
        groups = [(key, label) for key, (label, _) in self.GROUPS.items()]
        return [*groups, ("attention", "needs attention"), *RuntimeClass.choices]

    def queryset(self, request, queryset):
        value = self.value()
        if not value:
            return queryset
        if value in self.GROUPS:
            return queryset.filter(runtime_class__in=self.GROUPS[value][1])
        if value == "attention":
            return queryset.needs_attention()
        return queryset.filter(runtime_class=value)


class NeedsAttentionFilter(admin.SimpleListFilter):
    title = "needs attention"
    parameter_name = "attention"

    def lookups(self, request, model_admin):
        return (("yes", "Yes"), ("no", "No"))

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.needs_attention()
        if self.value() == "no":
            return queryset.exclude(pk__in=queryset.needs_attention().values("pk"))
        return queryset


class AttentionFirstPaginator(Paginator):
    """Pages a changelist with the rows needing attention first, each part in the list's own
    order. Two index-friendly queries per page instead of one ORDER BY over a computed column
    (which would evaluate the attention rule on every row of a 100,000-row table)."""

    def __init__(self, object_list, per_page, attention_q, **options):
        super().__init__(object_list, per_page, **options)
        self.attention_q = attention_q

    @cached_property
    def attention_count(self):
        return self.object_list.filter(self.attention_q).count()

    def page(self, number):
        number = self.validate_number(number)
        bottom = (number - 1) * self.per_page
        top = bottom + self.per_page
        rows = []
        if bottom < self.attention_count:
            rows = list(self.object_list.filter(self.attention_q)[bottom : min(top, self.attention_count)])
        if top > self.attention_count:
            rest = self.object_list.exclude(self.attention_q)
            rows += list(rest[max(bottom - self.attention_count, 0) : top - self.attention_count])
        return self._get_page(rows, number, self)


class AttentionFirstChangeList(ChangeList):
    """Django shows a list that fits on one page (or "show all") straight from the queryset,
    without the paginator: order that one attention first too."""

    def get_results(self, request):
        super().get_results(request)
        if ORDER_VAR not in self.params and not (self.multi_page and not self.show_all):
            attention_q = self.paginator.attention_q
            self.result_list = [*self.queryset.filter(attention_q), *self.queryset.exclude(attention_q)]


class AttentionFirst:
    """Admin mixin: unless a column is clicked, the changelist shows attention rows first
    (`attention_q(request)` says which)."""

    def get_changelist(self, request, **kwargs):
        return AttentionFirstChangeList

    def get_paginator(self, request, queryset, per_page, orphans=0, allow_empty_first_page=True):
        if ORDER_VAR in request.GET:
            return super().get_paginator(request, queryset, per_page, orphans, allow_empty_first_page)
        return AttentionFirstPaginator(
            queryset, per_page, self.attention_q(request), orphans=orphans,
            allow_empty_first_page=allow_empty_first_page,
        )  # fmt: skip


def with_attention(queryset, now=None):
    """Annotate `attention` in SQL, so the changelist needs no per-row query."""
    condition = Runtime.needs_attention_q(now or timezone.now())
    return queryset.annotate(
        attention=Case(When(condition, then=Value(True)), default=Value(False), output_field=BooleanField())
    )


class LivenessEventInline(admin.TabularInline):
    model = LivenessEvent
    fields = ("at", "from_class", "to_class", "reason", "source", "host", "message")
    readonly_fields = fields
    ordering = ("-at", "-pk")
    extra = 0
    max_num = 0
    can_delete = False
    show_change_link = True
    verbose_name_plural = "ledger (newest first)"

    def has_add_permission(self, request, obj=None):
        return False


# Fields only launch, import, the reconciler and the controller write: never editable in the
# admin (a stop acts on what a row points to), so a row can only say what a machine observed.
# What a run used, read from its output at harvest (machine-written).
USAGE_FIELDS = (
    "turns",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "cost_usd",
    "agent_session_id",
    "resumed_from",
    "resume_count",
)
MACHINE_OWNED = (
    "ticket",
    "kind",
    "handle",
    "host",
    "provider",
    "model",
    "profile",
    "cwd",
    "tmux_socket",
    "tmux_target",
    "pid",
    "pid_create_time",
    "launch_token",
    "output_path",
    "started_at",
    "last_activity_at",
    "last_seen_at",
    "ended_at",
    "created_at",
    "runtime_class",
    "class_reason",
    "class_message",
    "class_changed_at",
    "reported_reason",
    "reported_at",
    "progress_at",
    "exit_outcome",
    "exit_code",
    "exit_signal",
    "resumes_at",
    "controller_action",
    *USAGE_FIELDS,
)
# What a superuser registering a runtime by hand may fill in: never the identity a stop trusts
# (pid start time, launch mark) nor anything the machines write later.
ADD_EDITABLE = ("ticket", "kind", "handle", "host", "provider", "model", "profile", "cwd", "tmux_socket",
                "tmux_target", "pid", "started_at")  # fmt: skip


# What the controller views and the changelist actions do: (service, verb, past tense, button).
def resume_runtime(runtime, by):
    """The resume service, with its refusal in the controller's words (for _act)."""
    try:
        return resume.resume(runtime, by=by)
    except resume.ResumeError as error:
        raise controller.ControllerError(str(error)) from None


CONTROLLER_ACTIONS = {
    "stop": (controller.stop_runtime, "Stop", "Stopped", "Yes, stop it"),
    "recover": (controller.recover_runtime, "Recover", "Recovered", "Yes, mark it completed"),
    "resume": (resume_runtime, "Resume", "Resumed", "Yes, resume it"),
}


@admin.register(Runtime)
class RuntimeAdmin(AttentionFirst, admin.ModelAdmin):
    list_display = (
        "handle",
        "ticket_key",
        "badge",
        "reason_words",
        "host_name",
        "provider_model",
        "cost_usd",
        "last_activity",
    )
    list_filter = (RuntimeClassFilter, NeedsAttentionFilter, "kind", "provider", "host", "exit_outcome")
    list_select_related = ("ticket",)
    search_fields = ("handle", "ticket__key", "model")
    raw_id_fields = ("ticket",)
    inlines = (LivenessEventInline,)
    actions = ("stop_workers", "recover_workers", "resume_workers")
    show_full_result_count = False
    list_per_page = 50
    change_form_template = "admin/runtimes/runtime/change_form.html"

    class Media:
        css = {"all": ("console/changelist.css",)}

    fieldsets = (
        (None, {"fields": ("ticket", "kind", "handle", "host", "provider", "model", "profile", "cwd")}),
        (
            "Where it runs",
            {"fields": ("tmux_socket", "tmux_target", "pid", "pid_create_time", "launch_token", "output_path")},
        ),
        ("Times", {"fields": ("started_at", "last_activity_at", "last_seen_at", "ended_at", "created_at")}),
        (
            "State (machine-written)",
            {
                "fields": (
                    "runtime_class",
                    "class_reason",
                    "class_message",
                    "class_changed_at",
                    "exit_outcome",
                    "exit_code",
                    "exit_signal",
                    "controller_action",
                    "resumes_at",
                )
            },
        ),
        (
            "Usage (from the output)",
            {"fields": USAGE_FIELDS},
        ),
        ("What the worker reported", {"fields": ("reported_reason", "reported_at", "progress_at")}),
    )

    def get_queryset(self, request):
        return with_attention(super().get_queryset(request))

    def attention_q(self, request):
        return Runtime.needs_attention_q(timezone.now())

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return tuple(name for name in MACHINE_OWNED if name not in ADD_EDITABLE)
        return MACHINE_OWNED

    def has_delete_permission(self, request, obj=None):
        # A runtime and its ledger are the record of what happened: only a superuser removes them.
        return request.user.is_superuser and super().has_delete_permission(request, obj)

    @admin.display(description="ticket", ordering="ticket__key")
    def ticket_key(self, runtime):
        return runtime.ticket.key

    @admin.display(description="class", ordering="runtime_class")
    def badge(self, runtime):
        badge = class_badge(runtime.runtime_class)
        if runtime.controller_action in (Runtime.ControllerAction.STOP_REQUESTED, Runtime.ControllerAction.STOPPING):
            return format_html("{} <em>{}</em>", badge, runtime.get_controller_action_display())
        if runtime.exit_outcome:
            return format_html("{} {}", badge, runtime.exit_outcome)
        return class_badge(runtime.runtime_class)

    @admin.display(description="reason, since", ordering="class_changed_at")
    def reason_words(self, runtime):
        """The reason in words (the message on hover) and since when, in one cell."""
        words = runtime.get_class_reason_display()
        since = humanize.when(runtime.class_changed_at)
        if getattr(runtime, "attention", False):
            return format_html(
                '<strong style="color:#c53030" title="needs attention: {}">⚠ {}</strong><br>{}',
                runtime.class_message, words, since,
            )  # fmt: skip
        return format_html('<span title="{}">{}</span><br>{}', runtime.class_message, words, since)

    @admin.display(description="host", ordering="host")
    def host_name(self, runtime):
        """The host's first label (the full name on hover): the column stays narrow."""
        return format_html('<span title="{}">{}</span>', runtime.host, runtime.host.split(".", 1)[0] or "—")

    @admin.display(description="provider / model", ordering="provider")
    def provider_model(self, runtime):
        return format_html("{} / {}", runtime.provider, runtime.model or "—")

    @admin.display(description="last activity", ordering="last_activity_at")
    def last_activity(self, runtime):
        return humanize.when(runtime.last_activity_at or runtime.last_seen_at)

    @admin.action(description="Stop worker (controller kill)…", permissions=("change",))
    def stop_workers(self, request, queryset):
        return self._confirm_or_act(request, queryset, "stop", "stop_workers")

    @admin.action(description="Mark work completed by the controller (recover)", permissions=("change",))
    def recover_workers(self, request, queryset):
        self._act(request, queryset, controller.recover_runtime, "Recovered")

    @admin.action(description="Resume usage-limited worker (relaunch its session)", permissions=("change",))
    def resume_workers(self, request, queryset):
        resumed, failures = 0, []
        for runtime in queryset.select_related("ticket"):
            try:
                resume.resume(runtime, by=request.user.get_username())
                resumed += 1
            except resume.ResumeError as error:
                failures.append(str(error))
        self.message_user(request, f"Resumed {resumed} runtime(s).", messages.SUCCESS)
        for failure in failures:
            self.message_user(request, failure, messages.ERROR)

    def _confirm_or_act(self, request, queryset, action, action_name):
        """Like Django's delete: first an intermediate page that names the runtimes, then the act."""
        service, _, past, _ = CONTROLLER_ACTIONS[action]
        if request.POST.get("post") == "yes":
            self._act(request, queryset, service, past)
            return None
        return self._confirmation(request, list(queryset.select_related("ticket")), action, action_name)

    def _confirmation(self, request, runtimes, action, action_name=""):
        _, verb, _, button = CONTROLLER_ACTIONS[action]
        title = f"{verb} {runtimes[0].handle}?" if len(runtimes) == 1 else f"{verb} {len(runtimes)} runtimes?"
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "opts": self.opts,
            "runtimes": runtimes,
            "action": action,
            "action_name": action_name,
            "button": button,
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/runtimes/runtime/controller_confirmation.html", context)

    def spend_view(self, request):
        """Spend per day (with a chart), per profile and per ticket: a handful of queries."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        runtimes = Runtime.objects.all()
        series = budgets.per_day(runtimes, days=30)
        bars, peak = budgets.chart(series)
        budgets_by_name = {p.name: p for p in WorkerProfile.objects.all()}
        profiles = []
        for row in budgets.grouped(runtimes, "profile"):
            profile = budgets_by_name.get(row["profile"])
            profiles.append({**row, "daily_budget": profile and profile.daily_budget_usd,
                             "total_budget": profile and profile.total_budget_usd})  # fmt: skip
        tickets = budgets.grouped(runtimes, "ticket", "ticket__key", "ticket__total_budget_usd")[:50]
        context = {
            **self.admin_site.each_context(request),
            "title": "Spend",
            "days": series,
            "bars": bars,
            "peak": peak,
            "chart_width": 720,
            "chart_height": 140,
            "baseline": 140,
            "profiles": profiles,
            "tickets": list(tickets),
            "time_zone": timezone.get_current_timezone_name(),
        }
        return TemplateResponse(request, "admin/runtimes/spend.html", context)

    def get_urls(self):
        return [
            path("spend/", self.admin_site.admin_view(self.spend_view), name="runtimes_runtime_spend"),
            path(
                "<path:object_id>/stop/",
                self.admin_site.admin_view(self.controller_view),
                {"action": "stop"},
                name="runtimes_runtime_stop",
            ),
            path(
                "<path:object_id>/recover/",
                self.admin_site.admin_view(self.controller_view),
                {"action": "recover"},
                name="runtimes_runtime_recover",
            ),
            path(
                "<path:object_id>/resume/",
                self.admin_site.admin_view(self.controller_view),
                {"action": "resume"},
                name="runtimes_runtime_resume",
            ),
            *super().get_urls(),
        ]

    def controller_view(self, request, object_id, action):
        """GET: "Stop this worker?" with what it is; POST: do it, back to the runtime's page."""
        runtime = self.get_object(request, unquote(object_id))
        if runtime is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        if not self.has_change_permission(request, runtime):
            raise PermissionDenied
        if request.method == "POST":
            service, _, past, _ = CONTROLLER_ACTIONS[action]
            self._act(request, Runtime.objects.filter(pk=runtime.pk), service, past)
            return HttpResponseRedirect(reverse("admin:runtimes_runtime_change", args=[runtime.pk]))
        return self._confirmation(request, [runtime], action)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        """Read-first: the live state, timeline, output and attach command above the form."""
        runtime = self.get_object(request, unquote(object_id))
        if runtime is not None and self.has_view_or_change_permission(request, runtime):
            now = timezone.now()
            extra_context = {
                **(extra_context or {}),
                **console_views.runtime_live_context(request, runtime, now),
                "live": True,
            }
        return super().change_view(request, object_id, form_url, extra_context)

    def _act(self, request, queryset, action, verb):
        changed, requested, failures = 0, 0, []
        for runtime in queryset.select_related("ticket"):
            try:
                result = action(runtime, by=request.user.get_username())
            except controller.ControllerError as error:
                failures.append(f"{runtime.handle}: {error}")
                continue
            if getattr(result, "state", None) == controller.StopState.REQUESTED:
                requested += 1
            elif result:
                changed += 1
        self.message_user(request, f"{verb} {changed} runtime(s).", messages.SUCCESS)
        if requested:
            self.message_user(
                request, f"Stop requested for {requested} runtime(s) of other hosts; they show “stop requested” "
                "until their host stops them.", messages.INFO,
            )  # fmt: skip
        for failure in failures:
            self.message_user(request, failure, messages.ERROR)


class EstimatedCountPaginator(Paginator):
    """Pages the ledger without a full COUNT(*): on PostgreSQL an unfiltered list uses the
    planner's row estimate (pg_class.reltuples) once the table is large; otherwise it counts."""

    EXACT_BELOW = 10_000

    @cached_property
    def count(self):
        queryset = self.object_list
        database = connections[queryset.db]
        if database.vendor == "postgresql" and not queryset.query.where:
            with database.cursor() as cursor:
                cursor.execute(
                    "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass", [queryset.model._meta.db_table]
                )
                row = cursor.fetchone()
            if row and row[0] >= self.EXACT_BELOW:
                return row[0]
        return super().count


class ReadOnlyAdmin(admin.ModelAdmin):
    """Machine-written, append-only rows: visible, never added, edited or deleted by hand."""

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in self.model._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(LivenessEvent)
class LivenessEventAdmin(ReadOnlyAdmin):
    paginator = EstimatedCountPaginator
    list_display = ("when", "runtime_handle", "from_badge", "to_badge", "reason", "source", "host")
    list_filter = ("to_class", "reason", "source")
    list_select_related = ("runtime",)
    search_fields = ("runtime__handle",)
    show_full_result_count = False
    list_per_page = 100
    date_hierarchy = None

    @admin.display(description="at", ordering="at")
    def when(self, event):
        return humanize.when(event.at)

    @admin.display(description="runtime", ordering="runtime__handle")
    def runtime_handle(self, event):
        return event.runtime.handle

    @admin.display(description="from")
    def from_badge(self, event):
        return class_badge(event.from_class) if event.from_class else "—"

    @admin.display(description="to")
    def to_badge(self, event):
        return class_badge(event.to_class)


@admin.register(ReconcilerHeartbeat)
class ReconcilerHeartbeatAdmin(admin.ModelAdmin):
    list_display = ("host", "finished_at", "duration_ms", "runtimes_seen", "transitions", "errors")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(WatcherHeartbeat)
class WatcherHeartbeatAdmin(admin.ModelAdmin):
    list_display = ("host", "state", "beat_at", "watched", "pidfds", "polled", "tmux_clients", "transitions",
                    "last_pass_ms", "started_at")  # fmt: skip

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="watcher")
    def state(self, obj):
        state = obj.state()
        colour = "#2f855a" if state == WatcherHeartbeat.State.WATCHING else "#c53030"
        return format_html('<b style="color:{}">{}</b>', colour, state.label)


@admin.register(WorkerProfile)
class WorkerProfileAdmin(admin.ModelAdmin):
    list_display = ("name", "provider", "model", "max_turns", "max_budget_usd", "effort", "enabled")
    list_filter = ("provider", "enabled")
    search_fields = ("name", "model")


@admin.register(ModelSmokeResult)
class ModelSmokeResultAdmin(admin.ModelAdmin):
    list_display = ("checked_at", "provider", "model", "auth_mode", "ok", "reason", "duration_ms", "host")
    list_filter = ("provider", "ok", "reason")
    search_fields = ("model",)

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in self.model._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Tokens are created with `create_api_token` (or minted at launch) and only revoked here."""

    list_display = ("name", "prefix_shown", "role", "host", "runtime", "created_at", "last_used_at", "revoked_at")
    list_filter = ("role", "host", ("revoked_at", admin.EmptyFieldListFilter))
    list_select_related = ("runtime",)
    search_fields = ("name", "prefix", "host")
    actions = ("revoke",)

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in self.model._meta.fields if f.name != "token_hash"]

    def has_add_permission(self, request):
        return False

    @admin.display(description="token", ordering="prefix")
    def prefix_shown(self, token):
        return format_html("<code>{}…</code>", token.prefix)

    @admin.action(description="Revoke the selected tokens", permissions=("change",))
    def revoke(self, request, queryset):
        count = tokens.revoke(queryset)
        self.message_user(request, f"Revoked {count} token(s).", messages.SUCCESS)


# The notification rooms register their own admin pages.
from runtimes.notify import admin as notify_admin  # noqa: E402, F401
