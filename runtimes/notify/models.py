"""Notification channels, attention episodes and deliveries (rows of the runtimes app)."""

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.utils import timezone

from runtimes.notify import episodes


def split_list(value):
    return [item.strip() for item in (value or "").split(",") if item.strip()]


class NotificationChannel(models.Model):
    """One Apprise URL kept in the admin. The URL holds secrets: it is never shown back in clear."""

    name = models.CharField(max_length=100, unique=True)
    url = models.TextField(
        help_text="An Apprise URL, e.g. tgram://BOT_TOKEN/CHAT_ID or json://host:port/path. "
        "It is stored but never shown again; leave blank when editing to keep the current one."
    )
    enabled = models.BooleanField(default=True)
    hosts = models.CharField(max_length=500, blank=True, help_text="Comma-separated hosts; blank: every host.")
    providers = models.CharField(
        max_length=200, blank=True, help_text="Comma-separated providers (claude, codex, …); blank: every provider."
    )
    classes = models.CharField(
        max_length=500, blank=True, help_text="Comma-separated runtime classes; blank: every class."
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ("name",)

    def __str__(self):
        return self.name

    @property
    def redacted_url(self):
        return episodes.redact_url(self.url)

    @property
    def channel_key(self):
        return f"db:{self.pk}"

    def route(self):
        """This channel as the pure episode logic sees it."""
        return episodes.Route(
            key=self.channel_key,
            label=f"{self.name} ({self.redacted_url})",
            hosts=frozenset(split_list(self.hosts)),
            providers=frozenset(split_list(self.providers)),
            classes=frozenset(split_list(self.classes)),
        )

    def clean(self):
        from runtimes.models import Provider, RuntimeClass
        from runtimes.notify import transport

        errors = {}
        if self.url and not transport.is_valid_url(self.url):
            errors["url"] = "Apprise does not understand this URL; see the Apprise wiki for the scheme you need."
        unknown = [p for p in split_list(self.providers) if p not in Provider.values]
        if unknown:
            errors["providers"] = f"Unknown provider(s) {', '.join(unknown)}; use {', '.join(Provider.values)}."
        unknown = [c for c in split_list(self.classes) if c not in RuntimeClass.values]
        if unknown:
            errors["classes"] = f"Unknown class(es) {', '.join(unknown)}; use values such as tmux-missing, unknown."
        if errors:
            raise ValidationError(errors)


class AttentionEpisode(models.Model):
    """One stretch of time during which a runtime needed a person (healthchecks' Flip, paired)."""

    class State(models.TextChoices):
        OPEN = "open", "needs attention"
        CLOSING = "closing", "ended, resolved notice held while it may flap back"
        CLOSED = "closed", "closed"

    runtime = models.ForeignKey("runtimes.Runtime", on_delete=models.CASCADE, related_name="attention_episodes")
    state = models.CharField(max_length=8, choices=State, default=State.OPEN)
    opened_at = models.DateTimeField(default=timezone.now)
    closed_at = models.DateTimeField(null=True, blank=True, help_text="When the runtime stopped needing attention.")
    resolved_at = models.DateTimeField(null=True, blank=True, help_text="When the episode was settled as closed.")
    runtime_class = models.CharField(max_length=24, help_text="The runtime's class when the episode opened.")
    reason = models.CharField(max_length=32, blank=True)
    message = models.TextField(blank=True)
    end_class = models.CharField(max_length=24, blank=True, help_text="The runtime's class when it ended.")
    flaps = models.PositiveIntegerField(default=0, help_text="Times it came back within the quiet period.")

    class Meta:
        ordering = ("-opened_at", "-pk")
        constraints = [
            models.UniqueConstraint(
                fields=["runtime"],
                condition=~Q(state="closed"),
                name="episode_one_unfinished_per_runtime",
                violation_error_message="A runtime has at most one unfinished attention episode.",
            ),
            models.CheckConstraint(name="episode_state_valid", condition=Q(state__in=["open", "closing", "closed"])),
        ]
        indexes = [
            # Each pass's "unfinished episodes" (partial: closed history is skipped).
            models.Index(fields=["state"], name="episode_unfinished_idx", condition=~Q(state="closed")),
            # A runtime's episodes, newest first (the runtime page).
            models.Index(fields=["runtime", "-opened_at"], name="episode_runtime_recent_idx"),
            # The episode changelist, newest first.
            models.Index(fields=["-opened_at", "-id"], name="episode_recent_idx"),
        ]

    def __str__(self):
        return f"{self.runtime_class} {self.state} #{self.pk}"


class Delivery(models.Model):
    """One notification to one channel, sent by a django-q2 task, retried with backoff."""

    class Kind(models.TextChoices):
        OPENED = "opened", "needs attention"
        RESOLVED = "resolved", "resolved"
        DIGEST = "digest", "digest"
        TEST = "test", "test"
        BUDGET_WARNING = "budget-warning", "budget warning"

    class Status(models.TextChoices):
        PENDING = "pending", "pending"
        SENT = "sent", "sent"
        FAILED = "failed", "failed"

    channel = models.ForeignKey(
        NotificationChannel, null=True, blank=True, on_delete=models.SET_NULL, related_name="deliveries"
    )
    channel_key = models.CharField(
        max_length=80, help_text="db:<channel id> or env:<hash of a CONTROLROOM_NOTIFY_URLS entry> (never the URL)."
    )
    target = models.CharField(max_length=255, help_text="The channel's name and redacted URL.")
    runtime = models.ForeignKey(
        "runtimes.Runtime", null=True, blank=True, on_delete=models.CASCADE, related_name="deliveries"
    )
    episode = models.ForeignKey(
        AttentionEpisode, null=True, blank=True, on_delete=models.CASCADE, related_name="deliveries"
    )
    kind = models.CharField(max_length=16, choices=Kind)
    key = models.CharField(max_length=200, blank=True, help_text="Deduplication key: one delivery per channel.")
    title = models.CharField(max_length=255)
    body = models.TextField()
    status = models.CharField(max_length=8, choices=Status, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True, help_text="The last failure, with the channel's secrets redacted.")
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ("-created_at", "-pk")
        verbose_name_plural = "deliveries"
        constraints = [
            models.UniqueConstraint(
                fields=["channel_key", "key"], condition=~Q(key=""), name="delivery_key_unique_per_channel"
            ),
            models.CheckConstraint(name="delivery_status_valid", condition=Q(status__in=["pending", "sent", "failed"])),
        ]
        indexes = [
            # The sweep's "pending deliveries due for an attempt" (partial: sent/failed are skipped).
            models.Index(fields=["next_attempt_at"], name="delivery_due_idx", condition=Q(status="pending")),
            # The deliveries changelist, newest first.
            models.Index(fields=["-created_at", "-id"], name="delivery_recent_idx"),
        ]

    def __str__(self):
        return f"{self.kind} {self.status} #{self.pk}"
