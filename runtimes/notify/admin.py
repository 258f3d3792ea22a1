"""Admin for notification channels (URL write-only, shown redacted), episodes and deliveries (read-only)."""

from django import forms
from django.contrib import admin
from django.utils.html import format_html

from runtimes.admin import ReadOnlyAdmin
from runtimes.notify import service
from runtimes.notify.models import AttentionEpisode, Delivery, NotificationChannel


class NotificationChannelForm(forms.ModelForm):
    """The URL is write-only: never rendered back; left blank on an edit, the stored one stays."""

    url = forms.CharField(
        label="Apprise URL",
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off", "size": 80}),
        help_text=NotificationChannel._meta.get_field("url").help_text,
    )

    class Meta:
        model = NotificationChannel
        fields = ("name", "url", "enabled", "hosts", "providers", "classes")

    def clean_url(self):
        url = self.cleaned_data["url"]
        if url:
            return url
        if self.instance.pk:
            return self.instance.url
        raise forms.ValidationError("An Apprise URL is required.")


@admin.register(NotificationChannel)
class NotificationChannelAdmin(admin.ModelAdmin):
    form = NotificationChannelForm
    list_display = ("name", "redacted", "enabled", "hosts", "providers", "classes", "created_at")
    list_filter = ("enabled",)
    search_fields = ("name",)
    readonly_fields = ("redacted",)
    fields = ("name", "redacted", "url", "enabled", "hosts", "providers", "classes")
    actions = ("send_test",)

    @admin.display(description="URL (redacted)")
    def redacted(self, channel):
        return format_html("<code>{}</code>", channel.redacted_url) if channel.url else "—"

    @admin.action(description="Send a test notification", permissions=("change",))
    def send_test(self, request, queryset):
        deliveries = service.send_test([channel.route() for channel in queryset])
        self.message_user(request, f"Queued {len(deliveries)} test notification(s); see Deliveries for how each went.")


@admin.register(AttentionEpisode)
class AttentionEpisodeAdmin(ReadOnlyAdmin):
    list_display = (
        "runtime_handle",
        "state",
        "runtime_class",
        "reason",
        "opened_at",
        "closed_at",
        "end_class",
        "flaps",
    )
    list_filter = ("state", "runtime_class")
    list_select_related = ("runtime",)
    search_fields = ("runtime__handle",)
    list_per_page = 100

    @admin.display(description="runtime", ordering="runtime__handle")
    def runtime_handle(self, episode):
        return episode.runtime.handle


@admin.register(Delivery)
class DeliveryAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "kind", "status", "target", "runtime_handle", "attempts", "short_error", "sent_at")
    list_filter = ("status", "kind")
    list_select_related = ("runtime",)
    search_fields = ("target", "runtime__handle", "title")
    list_per_page = 100
    fields = (
        "kind", "status", "target", "channel", "runtime", "episode", "title", "body", "attempts", "next_attempt_at",
        "error", "created_at", "sent_at", "updated_at",
    )  # fmt: skip

    @admin.display(description="runtime", ordering="runtime__handle")
    def runtime_handle(self, delivery):
        return delivery.runtime.handle if delivery.runtime_id else "—"

    @admin.display(description="error")
    def short_error(self, delivery):
        return delivery.error[:120] + ("…" if len(delivery.error) > 120 else "")
