from django import forms
from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.db.models import Count, OuterRef, Q, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone
from django.utils.html import format_html

from runtimes.admin import AttentionFirst
from runtimes.console import board, humanize
from runtimes.models import LIVE_CLASSES, Runtime
from tickets.models import Ticket, TicketEvent, Verdict, user_may_close_as_validator

VALIDATOR_REFUSAL = "Only validators may record a validator verdict that closes a ticket."
CLOSE_REFUSAL = "Only validators may close a ticket as done: record a validator verdict, or ask a validator."


class TicketForm(forms.ModelForm):
    """Refuses moving a ticket to done for anyone who is not a validator. (TicketAdmin's form
    factory supplies the model and the fields, from its fieldsets.)"""

    user = None

    def clean_state(self):
        state = self.cleaned_data["state"]
        closing = state == Ticket.State.DONE and self.initial.get("state") != Ticket.State.DONE
        if closing and not user_may_close_as_validator(self.user):
            raise forms.ValidationError(CLOSE_REFUSAL)
        return state


def banner(text):
    return format_html(
        '<div class="cr-banner" style="background:#fff5f5;border-left:4px solid #c53030;padding:4px 8px;'
        'color:#742a2a">{}</div>',
        text,
    )


class VerdictForm(forms.ModelForm):
    """Refuses a closing validator verdict from anyone who is not a validator."""

    user = None

    class Meta:
        model = Verdict
        fields = ("gate", "outcome", "summary", "author", "commit_sha", "runtime")

    def clean(self):
        cleaned = super().clean()
        closes = cleaned.get("gate") == Verdict.Gate.VALIDATOR and cleaned.get("outcome") in Verdict.CLOSING_OUTCOMES
        if closes and not self.instance.pk and not user_may_close_as_validator(self.user):
            raise forms.ValidationError(VALIDATOR_REFUSAL)
        return cleaned


class VerdictInline(admin.TabularInline):
    model = Verdict
    form = VerdictForm
    fields = ("created_at", "gate", "outcome", "summary", "author", "commit_sha", "runtime", "recorded_by")
    readonly_fields = ("created_at", "recorded_by")
    raw_id_fields = ("runtime",)
    extra = 0
    ordering = ("-created_at", "-pk")

    def get_formset(self, request, obj=None, **kwargs):
        formset = super().get_formset(request, obj, **kwargs)
        formset.form = type("VerdictFormForUser", (formset.form,), {"user": request.user})
        return formset

    def has_change_permission(self, request, obj=None):
        return False  # verdicts are records: add new ones, never rewrite old ones


class TicketEventInline(admin.TabularInline):
    """The ticket's state history: who closed, cancelled or reopened it, and when (append-only)."""

    model = TicketEvent
    fields = ("at", "from_state", "to_state", "by")
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False
    ordering = ("-at", "-pk")
    verbose_name_plural = "state history (newest first)"

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class RuntimeInline(admin.TabularInline):
    model = Runtime
    fields = ("handle", "kind", "runtime_class", "exit_outcome", "host", "started_at", "class_message")
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False
    show_change_link = True
    ordering = ("-started_at", "-pk")

    def has_add_permission(self, request, obj=None):
        return False


class FailureBannerFilter(admin.SimpleListFilter):
    title = "failure banner"
    parameter_name = "banner"

    def lookups(self, request, model_admin):
        return (("yes", "Has a banner"), ("no", "No banner"))

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.with_banner()
        if self.value() == "no":
            return queryset.filter(failure_reason="")
        return queryset


@admin.register(Ticket)
class TicketAdmin(AttentionFirst, admin.ModelAdmin):
    form = TicketForm
    list_display = ("key", "title", "state", "owner", "banner_column", "live_runtimes", "attention_runtimes", "updated")
    list_filter = ("state", "kind", FailureBannerFilter, "priority")
    search_fields = ("key", "title", "owner")
    readonly_fields = ("banner_display", "closed_at", "closed_by", "created_at", "updated_at")
    raw_id_fields = ("parent",)
    inlines = (VerdictInline, TicketEventInline, RuntimeInline)
    show_full_result_count = False
    change_form_template = "admin/tickets/ticket/change_form.html"

    class Media:
        css = {"all": ("console/changelist.css",)}

    fieldsets = (
        (
            None,
            {
                "fields": (
                    "banner_display",
                    "key",
                    "title",
                    "description",
                    "state",
                    "kind",
                    "priority",
                    "owner",
                    "parent",
                )
            },
        ),
        ("Status", {"fields": ("failure_reason", "note", "closed_at", "closed_by", "created_at", "updated_at")}),
        ("Budgets (USD)", {"fields": ("daily_budget_usd", "total_budget_usd")}),
    )

    def get_form(self, request, obj=None, **kwargs):
        form = super().get_form(request, obj, **kwargs)
        return type("TicketFormForUser", (form,), {"user": request.user})

    def change_view(self, request, object_id, form_url="", extra_context=None):
        """Read-first: the ticket's activity feed (comments, verdicts, ledger) above the form."""
        ticket = self.get_object(request, unquote(object_id))
        if ticket is not None and self.has_view_or_change_permission(request, ticket):
            extra_context = {**(extra_context or {}), "activity": board.ticket_activity(ticket), "now": timezone.now()}
        return super().change_view(request, object_id, form_url, extra_context)

    def save_model(self, request, obj, form, change):
        """The state changes as the signed-in user, through Ticket.move_to (closer and history)."""
        state = obj.state
        if change and "state" in form.changed_data:
            obj.state = form.initial["state"]
        super().save_model(request, obj, form, change)
        obj.move_to(state, by=request.user.get_username())

    def save_formset(self, request, form, formset, change):
        """New verdicts are recorded by the signed-in user (a closing one makes them the closer)."""
        for verdict_form in formset.forms:
            if isinstance(verdict_form.instance, Verdict) and not verdict_form.instance.pk:
                verdict_form.instance.recorded_by = request.user.get_username()
        super().save_formset(request, form, formset, change)

    def attention_q(self, request):
        """Tickets with a runtime needing attention (listed first)."""
        return Q(pk__in=Runtime.objects.needs_attention().values("ticket_id"))

    def get_queryset(self, request):
        """Counts as correlated subqueries: the database computes them only for the shown page."""
        runtimes = Runtime.objects.filter(ticket=OuterRef("pk")).order_by().values("ticket")
        attention = runtimes.filter(Runtime.needs_attention_q(timezone.now()))
        live = runtimes.filter(runtime_class__in=LIVE_CLASSES)
        return (
            super()
            .get_queryset(request)
            .annotate(
                live_count=Coalesce(Subquery(live.annotate(n=Count("pk")).values("n")), 0),
                attention_count=Coalesce(Subquery(attention.annotate(n=Count("pk")).values("n")), 0),
            )
        )

    @admin.display(description="failure banner")
    def banner_column(self, ticket):
        if not ticket.failure_reason:
            return ""
        text = ticket.failure_reason
        return banner(text if len(text) <= 120 else text[:119] + "…")

    @admin.display(description="updated", ordering="updated_at")
    def updated(self, ticket):
        return humanize.when(ticket.updated_at)

    @admin.display(description="failure banner")
    def banner_display(self, ticket):
        return banner(ticket.failure_reason) if ticket.failure_reason else "—"

    @admin.display(description="live", ordering="live_count")
    def live_runtimes(self, ticket):
        return ticket.live_count

    @admin.display(description="need attention", ordering="attention_count")
    def attention_runtimes(self, ticket):
        if ticket.attention_count:
            return format_html('<strong style="color:#c53030">{}</strong>', ticket.attention_count)
        return 0


@admin.register(Verdict)
class VerdictAdmin(admin.ModelAdmin):
    form = VerdictForm
    list_display = ("created_at", "ticket", "gate", "outcome", "author", "recorded_by", "runtime")
    list_filter = ("gate", "outcome")
    list_select_related = ("ticket", "runtime")
    search_fields = ("ticket__key", "summary", "author")
    raw_id_fields = ("ticket", "runtime")
    show_full_result_count = False

    fields = ("ticket", *VerdictForm.Meta.fields)

    def get_form(self, request, obj=None, **kwargs):
        form = super().get_form(request, obj, **kwargs)
        return type("VerdictFormForUser", (form,), {"user": request.user})

    def save_model(self, request, obj, form, change):
        obj.recorded_by = request.user.get_username()
        super().save_model(request, obj, form, change)

    def has_change_permission(self, request, obj=None):
        return False if obj is not None else super().has_change_permission(request, obj)
