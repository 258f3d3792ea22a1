from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import models, transaction
from django.db.models import Q
from django.utils import timezone

TICKET_KEY_PATTERN = r"^[A-Z][A-Z0-9]{1,9}-[1-9][0-9]{0,7}\Z"
validate_ticket_key = RegexValidator(
    TICKET_KEY_PATTERN,
    "A ticket key is a project code in capitals, a dash and a number, like MC-4502.",
)


class TicketQuerySet(models.QuerySet):
    def expecting_worker(self):
        """Tickets on which a worker should be running right now."""
        return self.filter(Ticket.expects_worker_q())

    def with_banner(self):
        return self.exclude(failure_reason="")

    def stale_banners(self):
        """Closed tickets still wearing a failure banner."""
        return self.filter(state__in=Ticket.CLOSED_STATES).exclude(failure_reason="")


class Ticket(models.Model):
    class State(models.TextChoices):
        BACKLOG = "backlog", "Backlog"
        IN_PROGRESS = "in_progress", "In progress"
        WAITING = "waiting", "Waiting"
        REVIEW = "review", "Review"
        DONE = "done", "Done"
        CANCELLED = "cancelled", "Cancelled"

    class Kind(models.TextChoices):
        TASK = "task", "Task"
        UMBRELLA = "umbrella", "Umbrella"
        INTERACTIVE = "interactive", "Interactive"

    class Priority(models.IntegerChoices):
        URGENT = 1, "Urgent"
        HIGH = 2, "High"
        NORMAL = 3, "Normal"
        LOW = 4, "Low"

    WORKING_STATES = (State.IN_PROGRESS, State.REVIEW)
    CLOSED_STATES = (State.DONE, State.CANCELLED)

    key = models.CharField(max_length=20, unique=True, validators=[validate_ticket_key])
    title = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    state = models.CharField(max_length=16, choices=State, default=State.BACKLOG)
    kind = models.CharField(max_length=16, choices=Kind, default=Kind.TASK)
    priority = models.PositiveSmallIntegerField(choices=Priority, default=Priority.NORMAL)
    owner = models.CharField(max_length=100, blank=True, help_text="Who is responsible for the ticket.")
    parent = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="children",
        limit_choices_to={"kind": Kind.UMBRELLA},
        help_text="The umbrella ticket this one belongs to.",
    )
    failure_reason = models.TextField(
        blank=True,
        help_text="The operator-facing failure banner; blank when nobody needs to act.",
    )
    note = models.TextField(blank=True, help_text="The controller's latest note on the ticket's work.")
    daily_budget_usd = models.DecimalField(
        max_digits=10, decimal_places=2, null=True, blank=True, help_text="Launches stop once today's spend reaches it."
    )
    total_budget_usd = models.DecimalField(
        max_digits=10, decimal_places=2, null=True, blank=True, help_text="Launches stop once total spend reaches it."
    )
    closed_at = models.DateTimeField(null=True, blank=True)
    closed_by = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now)

    objects = TicketQuerySet.as_manager()

    class Meta:
        ordering = ("-updated_at",)
        constraints = [
            models.CheckConstraint(
                name="ticket_key_format",
                condition=Q(key__regex=TICKET_KEY_PATTERN),
                violation_error_message="A ticket key looks like MC-4502.",
            ),
            models.CheckConstraint(
                name="ticket_closed_has_closed_at",
                condition=~Q(state__in=("done", "cancelled")) | Q(closed_at__isnull=False),
                violation_error_message="A done or cancelled ticket needs a closing time.",
            ),
            models.CheckConstraint(
                name="ticket_not_its_own_parent",
                condition=~Q(parent=models.F("pk")),
            ),
        ]
        indexes = [
            # The ticket changelist's default ordering (newest activity first).
            models.Index(fields=["-updated_at"], name="ticket_recent_idx"),
            # The ticket changelist's "failure banner: has a banner" filter (and clear_stale_banners).
            models.Index(fields=["state"], name="ticket_banner_idx", condition=~Q(failure_reason="")),
        ]

    def __str__(self):
        return self.key

    def save(self, *args, **kwargs):
        """Keep the closing fields in step with the state, and stamp updated_at."""
        self.updated_at = timezone.now()
        if self.state in self.CLOSED_STATES and self.closed_at is None:
            self.closed_at = self.updated_at
        elif self.state not in self.CLOSED_STATES:
            self.closed_at, self.closed_by = None, ""
        if kwargs.get("update_fields") is not None:
            kwargs["update_fields"] = {*kwargs["update_fields"], "updated_at", "closed_at", "closed_by"}
        super().save(*args, **kwargs)

    @staticmethod
    def expects_worker_q(prefix=""):
        """The condition "a worker should be running": in progress or in review, not an umbrella."""
        return Q(**{f"{prefix}state__in": Ticket.WORKING_STATES}) & ~Q(**{f"{prefix}kind": Ticket.Kind.UMBRELLA})

    @staticmethod
    def worker_expected(state, kind):
        """expects_worker for a ticket's state and kind read without the ticket (a values() row)."""
        return state in Ticket.WORKING_STATES and kind != Ticket.Kind.UMBRELLA

    @property
    def expects_worker(self):
        return self.worker_expected(self.state, self.kind)

    @property
    def is_closed(self):
        return self.state in self.CLOSED_STATES

    def close(self, by, now=None):
        """Close the ticket as done and clear its failure banner, as `by` (saves, and appends the
        change to the ticket's history)."""
        self.failure_reason = ""
        if self.state == self.State.DONE:  # already closed: its closer stays on record
            self.save(update_fields=["failure_reason"])
            return
        self.move_to(self.State.DONE, by=by, now=now, extra_fields=["failure_reason"])

    def move_to(self, state, by, now=None, extra_fields=()):
        """Change the state as `by` — the signed-in user or a command's --by — and append the
        change to the ticket's history (a TicketEvent, never erased). Closing (done or cancelled)
        records who and when in closed_by/closed_at; reopening clears them on the ticket, while
        the history keeps every close, cancel and reopen. Saves; writes nothing when the state
        does not change."""
        previous = self.state
        if state == previous:
            return None
        now = now or timezone.now()
        self.state = state
        if state in self.CLOSED_STATES:
            self.closed_at, self.closed_by = now, by
        with transaction.atomic():
            self.save(update_fields=["state", *extra_fields])
            return TicketEvent.objects.create(ticket=self, at=now, by=by, from_state=previous, to_state=state)


class TicketEvent(models.Model):
    """One change of a ticket's state, with who made it and when: the ticket's append-only history."""

    ticket = models.ForeignKey(Ticket, on_delete=models.CASCADE, related_name="history")
    at = models.DateTimeField(default=timezone.now)
    by = models.CharField(max_length=150, help_text="The signed-in user, a command's --by, or a verdict's recorder.")
    from_state = models.CharField(max_length=16, choices=Ticket.State, blank=True)
    to_state = models.CharField(max_length=16, choices=Ticket.State)

    class Meta:
        ordering = ("-at", "-pk")
        constraints = [
            models.CheckConstraint(name="ticket_event_has_author", condition=~Q(by="")),
        ]
        indexes = [
            # The ticket page's history inline: this ticket's changes, newest first.
            models.Index(fields=["ticket", "-at"], name="ticket_event_recent_idx"),
        ]

    def __str__(self):
        return f"{self.from_state or '∅'} → {self.to_state} #{self.pk}"


class Verdict(models.Model):
    class Gate(models.TextChoices):
        CODER = "coder", "Coder"
        REVIEWER = "reviewer", "Reviewer"
        VALIDATOR = "validator", "Validator"
        QA = "qa", "QA"
        CONTROLLER = "controller", "Controller"

    class Outcome(models.TextChoices):
        DONE = "done", "Done"
        REVIEW = "review", "Review"
        QUESTION = "question", "Question"
        APPROVED = "approved", "Approved"
        CHANGES_REQUESTED = "changes_requested", "Changes requested"
        PARTIAL = "partial", "Partial"
        FAILED = "failed", "Failed"

    # A validator verdict with one of these outcomes closes its ticket.
    CLOSING_OUTCOMES = (Outcome.APPROVED, Outcome.DONE)

    ticket = models.ForeignKey(Ticket, on_delete=models.CASCADE, related_name="verdicts")
    runtime = models.ForeignKey(
        "runtimes.Runtime",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="verdicts",
        help_text="The worker run that produced this verdict, if any.",
    )
    gate = models.CharField(max_length=16, choices=Gate)
    outcome = models.CharField(max_length=20, choices=Outcome)
    summary = models.TextField(blank=True)
    author = models.CharField(max_length=100, blank=True, help_text="Who gave the judgement (free text).")
    recorded_by = models.CharField(
        max_length=150,
        blank=True,
        editable=False,
        help_text="Who recorded it: the signed-in user or a command's --by; a closing verdict's closer.",
    )
    commit_sha = models.CharField(
        max_length=40,
        blank=True,
        validators=[RegexValidator(r"^[0-9a-f]{7,40}\Z", "A commit SHA is 7 to 40 lowercase hex digits.")],
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ("-created_at", "-pk")
        constraints = [
            # One verdict per run: harvesting the same runtime twice records nothing new.
            models.UniqueConstraint(
                fields=["runtime"], name="verdict_one_per_runtime", condition=Q(runtime__isnull=False)
            ),
            # Whoever closes a ticket is on record (a trigger also keeps a verdict's runtime on its
            # ticket: migration 0007).
            models.CheckConstraint(
                name="verdict_closing_has_recorder",
                condition=~Q(gate="validator", outcome__in=["approved", "done"]) | ~Q(recorded_by=""),
                violation_error_message="A verdict that closes a ticket must say who recorded it.",
            ),
        ]
        indexes = [
            # The ticket page's verdict inline: this ticket's verdicts, newest first.
            models.Index(fields=["ticket", "-created_at"], name="verdict_ticket_recent_idx"),
        ]
        permissions = [("close_as_validator", "Can record validator verdicts that close tickets")]

    def __str__(self):
        return f"{self.gate}:{self.outcome} #{self.pk}"

    def clean(self):
        if self.runtime_id and self.ticket_id and self.runtime.ticket_id != self.ticket_id:
            raise ValidationError(
                {"runtime": f"Runtime {self.runtime.handle} worked on another ticket: pick a run of this ticket."}
            )

    @property
    def closes_ticket(self):
        return self.gate == self.Gate.VALIDATOR and self.outcome in self.CLOSING_OUTCOMES


class Comment(models.Model):
    """A note on a ticket from the controller, a validator or a person (the activity feed)."""

    class Kind(models.TextChoices):
        CONTROLLER = "controller", "Controller"
        VALIDATOR = "validator", "Validator"
        HUMAN = "human", "Human"

    ticket = models.ForeignKey(Ticket, on_delete=models.CASCADE, related_name="comments")
    kind = models.CharField(max_length=12, choices=Kind)
    author = models.CharField(max_length=100, blank=True)
    body = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ("-created_at", "-pk")
        indexes = [
            # The ticket page's activity feed: this ticket's comments, newest first.
            models.Index(fields=["ticket", "-created_at"], name="comment_ticket_recent_idx"),
        ]

    def __str__(self):
        return f"{self.kind} comment #{self.pk}"


def user_may_close_as_validator(user):
    return bool(user and user.is_active and user.has_perm("tickets.close_as_validator"))
