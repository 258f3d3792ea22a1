import math
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.utils import timezone

from tickets.models import Ticket


class RuntimeClass(models.TextChoices):
    PENDING = "pending", "pending"
    TMUX_LIVE = "tmux-live", "tmux-live"
    TMUX_MISSING = "tmux-missing", "tmux-missing"
    PROCESS_LIVE = "process-live", "process-live"
    PROCESS_DEAD = "process-dead", "process-dead"
    WEBSOCKET_ACTIVE = "websocket-active", "websocket-active"
    WEBSOCKET_IDLE = "websocket-idle", "websocket-idle"
    EXITED = "exited", "exited"
    KILLED_BY_CONTROLLER = "killed-by-controller", "killed-by-controller"
    COMPLETED_BY_CONTROLLER = "completed-by-controller", "completed-by-controller"
    NO_WORKER_EXPECTED = "no-worker-expected", "no-worker-expected"
    UNKNOWN = "unknown", "unknown"
    # Live classes refined by what a worker reports itself (hooks, notify, output): still alive.
    WAITING_INPUT = "waiting-input", "waiting-input"
    USAGE_LIMITED = "usage-limited", "usage-limited"
    STALLED = "stalled", "stalled"
    # A usage-limited run that was relaunched (its successor has resumed_from pointing here).
    RESUMED = "resumed", "resumed"


# Groups of classes, used by filters, the reconciler and the admin.
LIVE_CLASSES = (
    RuntimeClass.PENDING,
    RuntimeClass.TMUX_LIVE,
    RuntimeClass.PROCESS_LIVE,
    RuntimeClass.WEBSOCKET_ACTIVE,
    RuntimeClass.WEBSOCKET_IDLE,
    RuntimeClass.WAITING_INPUT,
    RuntimeClass.USAGE_LIMITED,
    RuntimeClass.STALLED,
)
# Live classes that only a worker's own report (or the absence of progress) can set.
SELF_REPORTED_CLASSES = (RuntimeClass.WAITING_INPUT, RuntimeClass.USAGE_LIMITED, RuntimeClass.STALLED)
# A runtime in one of these classes is settled: the reconciler never looks at it again.
FINAL_CLASSES = (
    RuntimeClass.EXITED,
    RuntimeClass.KILLED_BY_CONTROLLER,
    RuntimeClass.COMPLETED_BY_CONTROLLER,
    RuntimeClass.RESUMED,
)
ENDED_CLASSES = (*FINAL_CLASSES, RuntimeClass.TMUX_MISSING, RuntimeClass.PROCESS_DEAD)
MISSING_CLASSES = (RuntimeClass.TMUX_MISSING, RuntimeClass.PROCESS_DEAD)


class Reason(models.TextChoices):
    """Why a runtime is in its class: a closed vocabulary named after causes."""

    LAUNCHED = "launched", "launched"
    IMPORTED = "imported", "imported"
    AWAITING_START = "awaiting-start", "awaiting start"
    START_TIMEOUT = "start-timeout", "start timeout"
    PANE_ALIVE = "pane-alive", "pane alive"
    PROCESS_ALIVE = "process-alive", "process alive"
    SESSION_MISSING = "session-missing", "session missing"
    PANE_DEAD_EXIT = "pane-dead-exit", "pane dead (exit status)"
    PANE_DEAD_SIGNAL = "pane-dead-signal", "pane dead (signal)"
    PROCESS_EXITED = "process-exited", "process exited"
    PROCESS_ZOMBIE = "process-zombie", "process zombie"
    PID_REUSED = "pid-reused", "pid reused"
    ACCESS_DENIED = "access-denied", "access denied"
    NOT_OBSERVED = "not-observed", "not observed"
    CLOCK_SKEW = "clock-skew", "clock skew"
    RECENT_ACTIVITY = "recent-activity", "recent activity"
    HEARTBEAT_STALE = "heartbeat-stale", "heartbeat stale"
    HOST_SILENT = "host-silent", "host silent"
    TMUX_UNREACHABLE = "tmux-unreachable", "tmux unreachable"
    TICKET_INACTIVE = "ticket-inactive", "ticket expects no worker"
    CONTROLLER_KILL = "controller-kill", "controller kill"
    CONTROLLER_COMPLETE = "controller-complete", "controller complete"
    # Exit outcomes (set by harvest).
    COMPLETED = "completed", "completed"
    MAX_TURNS = "max-turns", "max turns"
    MAX_BUDGET = "max-budget", "max budget"
    API_ERROR = "api-error", "API error"
    AUTH_ERROR = "auth-error", "auth error"
    UNSUPPORTED_MODEL = "unsupported-model", "unsupported model"
    RATE_LIMITED = "rate-limited", "rate limited"
    # Self-reported live states (hooks, notify, output growth).
    PERMISSION_PROMPT = "permission-prompt", "waiting for permission"
    ELICITATION = "elicitation-dialog", "waiting for an answer"
    IDLE_PROMPT = "idle-prompt", "waiting for the next prompt"
    USAGE_LIMIT = "usage-limit", "usage limit"
    NO_PROGRESS = "no-progress", "no progress"
    WORKING = "working", "working"
    RESUMED = "resumed", "resumed"
    SUPERSEDED = "superseded", "a new run took over the handle"
    OVERLOADED = "overloaded", "overloaded"
    BILLING_ERROR = "billing-error", "billing error"
    EXECUTION_ERROR = "execution-error", "error during execution"
    STRUCTURED_OUTPUT = "structured-output-retries", "structured output retries"
    INTERRUPTED = "interrupted", "interrupted"
    VERDICT_FAILED = "verdict-failed", "worker reported failure"
    VERDICT_PARTIAL = "verdict-partial", "worker reported partial work"
    UNPARSEABLE_OUTPUT = "unparseable-output", "unparseable output"
    EXIT_STATUS = "exit-status", "exit status only"


class ExitOutcome(models.TextChoices):
    NONE = "", "—"
    COMPLETED = "completed", "completed"
    PARTIAL_USEFUL = "partial-useful", "partial-useful"
    FAILED = "failed", "failed"


class Provider(models.TextChoices):
    CLAUDE = "claude", "Claude Code"
    CODEX = "codex", "Codex CLI"
    HERMES = "hermes", "Hermes"
    OTHER = "other", "Other"


def validate_model_name(value):
    """An exact model name: no blanks around or inside (there is no default model to fall back on),
    and never a flag (a name starting with "-" would be read as one)."""
    if not value or value != value.strip() or any(c.isspace() for c in value):
        raise ValidationError(f"{value!r} is not a model name: give the exact model, e.g. gpt-5.5.")
    if value.startswith("-"):
        raise ValidationError(f"{value!r} is not a model name: it starts with '-', so the CLI would read a flag.")


# A process create time is epoch seconds: finite, not negative, before the year 2286.
MAX_CREATE_TIME = 1e10


def validate_create_time(value):
    """A pid's create time is a finite epoch time: NaN or infinity would make any pid "ours"."""
    if value is not None and not (math.isfinite(value) and 0 <= value < MAX_CREATE_TIME):
        raise ValidationError(f"{value!r} is not a process create time: give epoch seconds (like 1795663518.81).")


# Flags a profile's extra arguments may not carry: each would change what the smoke test checked
# (the model), what Control Room reads (the output format) or how the worker reports itself (the
# settings holding its hooks, Codex's notify/hooks config). Per CLI, from its documented flags.
_CLAUDE_FORBIDDEN = {
    "--model": "the model (set it in the profile's model field)",
    "--fallback-model": "a second model the smoke test never ran",
    "--output-format": "the output format Control Room reads",
    "--input-format": "the input format Control Room writes",
    "-p": "print mode (always on)",
    "--print": "print mode (always on)",
    "--settings": "the settings file holding the worker's hooks",
    "--bare": "hooks (it skips them)",
    "--max-turns": "max turns (set it in the profile's max turns field)",
    "--max-budget-usd": "the budget (set it in the profile's max budget field)",
    "--resume": "which session runs (the controller resumes runs)",
    "-r": "which session runs (the controller resumes runs)",
    "--continue": "which session runs",
    "-c": "which session runs",
    "--session-id": "which session runs",
}
_CODEX_FORBIDDEN = {
    "-m": "the model (set it in the profile's model field)",
    "--model": "the model (set it in the profile's model field)",
    "--json": "the output format Control Room reads (always on)",
    "--experimental-json": "the output format Control Room reads",
    "--oss": "the model provider",
    "--local-provider": "the model provider",
    "-p": "the config profile, which may set the model",
    "--profile": "the config profile, which may set the model",
}
_CODEX_CONFIG_FLAGS = ("-c", "--config")
# Codex `-c key=value` keys that set the model, its provider or effort, notify or hooks.
_CODEX_FORBIDDEN_KEYS = ("model", "model_provider", "model_providers", "model_reasoning_effort", "notify", "hooks",
                         "profile", "profiles", "oss_provider")  # fmt: skip


def _codex_config_key(value):
    key = value.split("=", 1)[0].strip().strip("\"'")
    return key.split(".", 1)[0]


def validate_extra_args(provider, args):
    """Refuse extra CLI arguments that escape the smoke test or Control Room's reading of the run
    (`--model x`, `--model=x`, `--output-format text`, `--settings f`, Codex `-c notify=[…]`, …).
    Raises ValidationError naming the argument and what it would change."""
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise ValidationError("Extra arguments must be a JSON list of strings.")
    forbidden = _CODEX_FORBIDDEN if provider == Provider.CODEX else _CLAUDE_FORBIDDEN
    for index, arg in enumerate(args):
        flag, _, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if flag in forbidden:
            raise ValidationError(f"Extra argument {arg!r} would change {forbidden[flag]}; remove it.")
        if provider != Provider.CODEX:
            continue
        value = None
        if flag in _CODEX_CONFIG_FLAGS:
            value = inline or (args[index + 1] if index + 1 < len(args) else "")
        elif arg.startswith("-c") and len(arg) > 2 and not arg.startswith("--"):
            value = arg[2:]
        if value is not None and _codex_config_key(value) in _CODEX_FORBIDDEN_KEYS:
            raise ValidationError(
                f"Extra argument {arg!r} {value!r} sets {_codex_config_key(value)}, which the profile or "
                "Control Room controls; remove it."
            )


class RuntimeQuerySet(models.QuerySet):
    def on_host(self, host):
        return self.filter(host=host)

    def active(self):
        """Runtimes the reconciler still watches (not settled)."""
        return self.exclude(runtime_class__in=FINAL_CLASSES)

    def needs_attention(self, now=None):
        """Runtimes a person must act on; joins the ticket in SQL (one query)."""
        return self.filter(Runtime.needs_attention_q(now))


class Runtime(models.Model):
    class Kind(models.TextChoices):
        TMUX = "tmux", "tmux pane"
        PROCESS = "process", "background process"
        WEBSOCKET = "websocket", "websocket console"

    class ControllerAction(models.TextChoices):
        NONE = "none", "none"
        # A stop asked of the runtime's own host (a django-q2 task on its cluster), not yet done.
        STOP_REQUESTED = "stop-requested", "stop requested"
        # This host is stopping it: a death from now on is the controller's, never a failure.
        STOPPING = "stopping", "stopping"
        KILL = "kill", "kill"
        COMPLETE = "complete", "complete"

    ticket = models.ForeignKey(Ticket, on_delete=models.PROTECT, related_name="runtimes")
    kind = models.CharField(max_length=12, choices=Kind)
    handle = models.CharField(
        max_length=200, help_text="e.g. tmux:cr-mc-4502, hermes-bg:proc_0123456789ab, ws:console-17"
    )
    host = models.CharField(max_length=255, default="", blank=True)
    tmux_socket = models.CharField(
        max_length=255, blank=True, help_text="tmux socket name (-L) or path (-S); blank for the default server."
    )
    tmux_target = models.CharField(
        max_length=255, blank=True, help_text="Session name, session:window.pane or %pane id."
    )
    pid = models.PositiveIntegerField(null=True, blank=True)
    pid_create_time = models.FloatField(
        null=True,
        blank=True,
        validators=[validate_create_time],
        help_text="The process's start time (epoch seconds): with pid, its identity.",
    )
    provider = models.CharField(max_length=12, choices=Provider, default=Provider.OTHER)
    model = models.CharField(max_length=100, blank=True)
    profile = models.CharField(max_length=100, blank=True)
    cwd = models.CharField(max_length=1024, blank=True)
    output_path = models.CharField(max_length=1024, blank=True, help_text="The CLI's machine-readable output log.")
    started_at = models.DateTimeField(default=timezone.now)
    last_activity_at = models.DateTimeField(null=True, blank=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    exit_signal = models.PositiveSmallIntegerField(null=True, blank=True)
    exit_outcome = models.CharField(max_length=16, choices=ExitOutcome, default=ExitOutcome.NONE, blank=True)
    runtime_class = models.CharField(max_length=24, choices=RuntimeClass, default=RuntimeClass.PENDING)
    class_reason = models.CharField(max_length=32, choices=Reason, default=Reason.LAUNCHED)
    class_message = models.TextField(blank=True)
    class_changed_at = models.DateTimeField(default=timezone.now)
    resumes_at = models.DateTimeField(
        null=True, blank=True, help_text="When a usage-limited run's limit resets (the worker host's time, in UTC)."
    )
    controller_action = models.CharField(max_length=16, choices=ControllerAction, default=ControllerAction.NONE)
    launch_token = models.CharField(
        max_length=64,
        blank=True,
        default="",
        db_default="",
        help_text="The mark set on the tmux session at launch (@controlroom): a stop kills only a session carrying it.",
    )
    # What the run used, read from its output at harvest (null = unknown, never a guessed zero).
    turns = models.PositiveIntegerField(null=True, blank=True)
    input_tokens = models.PositiveBigIntegerField(null=True, blank=True)
    output_tokens = models.PositiveBigIntegerField(null=True, blank=True)
    cached_tokens = models.PositiveBigIntegerField(null=True, blank=True)
    cost_usd = models.DecimalField(
        max_digits=12,
        decimal_places=6,
        null=True,
        blank=True,
        help_text="Claude's total_cost_usd, or Codex token usage priced from the profile; blank when unknown.",
    )
    agent_session_id = models.CharField(
        max_length=200,
        blank=True,
        db_default="",
        default="",
        help_text="Claude session_id / Codex thread_id: what a resume continues.",
    )
    resumed_from = models.OneToOneField(
        "self",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="resumed_by",
        help_text="The usage-limited run this one continues.",
    )
    resume_count = models.PositiveSmallIntegerField(
        default=0, db_default=0, help_text="How many resumes led to this run (0 for a first run)."
    )
    # The worker's own last report (hooks, notify, a launcher) and its last sign of work: facts
    # the classifier reads on every pass, written only by runtimes.intake.
    reported_reason = models.CharField(max_length=32, choices=Reason, blank=True, db_default="")
    reported_at = models.DateTimeField(null=True, blank=True)
    progress_at = models.DateTimeField(null=True, blank=True, help_text="The last sign of work a worker reported.")
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    objects = RuntimeQuerySet.as_manager()

    class Meta:
        ordering = ("-started_at", "-pk")
        constraints = [
            # One unsettled run per handle and host; a new run of a handle (a different pid or create
            # time) settles the old row first (reason "superseded"), so history keeps both.
            models.UniqueConstraint(
                fields=["host", "handle"],
                name="runtime_handle_unique_per_host",
                condition=~Q(
                    runtime_class__in=["exited", "killed-by-controller", "completed-by-controller", "resumed"]
                ),
            ),
            models.CheckConstraint(
                name="runtime_tmux_has_target",
                condition=~Q(kind="tmux") | ~Q(tmux_target=""),
                violation_error_message="A tmux runtime needs a tmux target.",
            ),
            models.CheckConstraint(
                name="runtime_process_has_pid",
                condition=~Q(kind="process") | Q(pid__isnull=False),
                violation_error_message="A process runtime needs a pid.",
            ),
            models.CheckConstraint(
                name="runtime_websocket_has_no_tmux_target",
                condition=~Q(kind="websocket") | (Q(tmux_target="") & Q(tmux_socket="")),
                violation_error_message="A websocket runtime has no tmux socket or target.",
            ),
            models.CheckConstraint(
                name="runtime_class_valid",
                condition=Q(runtime_class__in=RuntimeClass.values),
            ),
            models.CheckConstraint(
                name="runtime_kind_valid",
                condition=Q(kind__in=["tmux", "process", "websocket"]),
            ),
            # NaN and infinity are refused (on PostgreSQL NaN sorts above every number).
            models.CheckConstraint(
                name="runtime_create_time_finite",
                condition=Q(pid_create_time__isnull=True)
                | Q(pid_create_time__gte=0, pid_create_time__lt=MAX_CREATE_TIME),
                violation_error_message="A process create time is a finite epoch time.",
            ),
        ]
        indexes = [
            # The reconciler's load: this host's unsettled runtimes (partial: history is skipped).
            models.Index(
                fields=["host", "runtime_class"],
                name="runtime_active_host_idx",
                condition=~Q(
                    runtime_class__in=["exited", "killed-by-controller", "completed-by-controller", "resumed"]
                ),
            ),
            # The changelist's runtime_class filter, newest first.
            models.Index(fields=["runtime_class", "-started_at"], name="runtime_class_recent_idx"),
            # The default changelist ordering.
            models.Index(fields=["-started_at", "-id"], name="runtime_recent_idx"),
            # A ticket's runtimes (ticket page inline and the ticket changelist's counts).
            models.Index(fields=["ticket", "runtime_class"], name="runtime_ticket_class_idx"),
            # Spend per profile and day (budgets at launch, the spend admin).
            models.Index(fields=["profile", "started_at"], name="runtime_profile_spend_idx"),
            # The watcher's "rows of this host changed since t" query (every CONTROLROOM_WATCH_SYNC s).
            models.Index(fields=["host", "class_changed_at"], name="runtime_host_changed_idx"),
        ]

    def __str__(self):
        return f"{self.handle} #{self.pk}" if self.pk else self.handle

    def clean(self):
        errors = {}
        if self.kind == self.Kind.TMUX and not self.tmux_target:
            errors["tmux_target"] = "A tmux runtime needs a tmux target (its session name)."
        if self.kind == self.Kind.PROCESS and self.pid is None:
            errors["pid"] = "A background-process runtime needs its pid."
        if self.kind == self.Kind.WEBSOCKET and (self.tmux_target or self.tmux_socket):
            errors["tmux_target"] = "A websocket console has no tmux pane: leave tmux socket and target blank."
        if errors:
            raise ValidationError(errors)

    @staticmethod
    def needs_attention_q(now=None, runtime_prefix="", ticket_prefix="ticket__"):
        """The condition "a person must act" (the design's attention rules), as a Q that can be
        used from Runtime (the default prefixes) or from Ticket (runtime_prefix="runtimes__",
        ticket_prefix="")."""
        now = now or timezone.now()
        config = settings.CONTROLROOM
        grace = timedelta(seconds=config["UNKNOWN_GRACE"])
        idle_grace = timedelta(seconds=config["IDLE_PROMPT_GRACE"])
        limit_grace = timedelta(seconds=config["USAGE_LIMIT_GRACE"])
        pause = timedelta(seconds=config["USAGE_LIMIT_PAUSE"])
        r = runtime_prefix
        waiting, limited = RuntimeClass.WAITING_INPUT, RuntimeClass.USAGE_LIMITED
        answer_now = (Reason.PERMISSION_PROMPT, Reason.ELICITATION)
        return Ticket.expects_worker_q(prefix=ticket_prefix) & (
            Q(**{f"{r}runtime_class__in": (*MISSING_CLASSES, RuntimeClass.STALLED)})
            | Q(**{f"{r}runtime_class": RuntimeClass.UNKNOWN, f"{r}class_changed_at__lte": now - grace})
            | Q(**{f"{r}runtime_class": RuntimeClass.EXITED, f"{r}exit_outcome": ExitOutcome.FAILED})
            | Q(**{f"{r}runtime_class": waiting, f"{r}class_reason__in": answer_now})
            | Q(**{f"{r}runtime_class": waiting, f"{r}class_changed_at__lte": now - idle_grace})
            | Q(**{f"{r}runtime_class": limited, f"{r}resumes_at__lte": now - limit_grace})
            | Q(**{f"{r}runtime_class": limited, f"{r}resumes_at__isnull": True,
                   f"{r}class_changed_at__lte": now - pause - limit_grace})
        )  # fmt: skip


class LivenessEvent(models.Model):
    """One runtime_class transition: the append-only ledger."""

    class Source(models.TextChoices):
        RECONCILER = "reconciler", "reconciler"
        CONTROLLER = "controller", "controller"
        LAUNCH = "launch", "launch"
        HARVEST = "harvest", "harvest"
        HEARTBEAT = "heartbeat", "heartbeat"
        IMPORT = "import", "import"
        HOOK = "hook", "hook"
        API = "api", "api"
        WATCHER = "watcher", "watcher"

    runtime = models.ForeignKey(Runtime, on_delete=models.CASCADE, related_name="events")
    at = models.DateTimeField(default=timezone.now)
    from_class = models.CharField(max_length=24, choices=RuntimeClass, blank=True)
    to_class = models.CharField(max_length=24, choices=RuntimeClass)
    reason = models.CharField(max_length=32, choices=Reason)
    message = models.TextField(blank=True)
    source = models.CharField(max_length=12, choices=Source)
    host = models.CharField(max_length=255, blank=True, help_text="The host whose reconciler or command wrote it.")
    observed = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ("-at", "-pk")
        indexes = [
            # "Events of this runtime, newest first" (the runtime page's ledger inline).
            models.Index(fields=["runtime", "-at", "-id"], name="event_runtime_recent_idx"),
            # The ledger changelist, newest first.
            models.Index(fields=["-at", "-id"], name="event_recent_idx"),
        ]

    def __str__(self):
        return f"{self.from_class or '∅'} → {self.to_class} #{self.pk}"


class ReconcilerHeartbeat(models.Model):
    """The last pass of each host's reconciler: a host that stops reporting is silent."""

    host = models.CharField(max_length=255, unique=True)
    finished_at = models.DateTimeField()
    duration_ms = models.PositiveIntegerField(default=0)
    runtimes_seen = models.PositiveIntegerField(default=0)
    transitions = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    counts = models.JSONField(default=dict, blank=True)
    time_zone = models.CharField(
        max_length=64, blank=True, help_text="The host's IANA time zone: its CLIs print usage-limit resets in it."
    )

    class Meta:
        ordering = ("host",)

    def __str__(self):
        return self.host


class WatcherHeartbeat(models.Model):
    """The event-driven watcher of each host (`watch_runtimes`): when it last reported, and what it
    holds. Separate from ReconcilerHeartbeat, so a dead watcher shows while the schedule still runs."""

    class State(models.TextChoices):
        WATCHING = "watching", "watching"
        SILENT = "silent", "silent"
        STOPPED = "stopped", "stopped"

    host = models.CharField(max_length=255, unique=True)
    pid = models.PositiveIntegerField(default=0, help_text="The watcher process on its host.")
    started_at = models.DateTimeField(default=timezone.now)
    beat_at = models.DateTimeField(default=timezone.now, help_text="Last sign of life (every few seconds).")
    stopped_at = models.DateTimeField(null=True, blank=True, help_text="Set when it stopped cleanly.")
    watched = models.PositiveIntegerField(default=0, help_text="Live runtimes it watches.")
    pidfds = models.PositiveIntegerField(default=0, help_text="Of those, held by a pidfd.")
    polled = models.PositiveIntegerField(default=0, help_text="Of those, polled (no pidfd: fd limit or none).")
    tmux_clients = models.PositiveIntegerField(default=0, help_text="tmux control-mode clients (one per socket).")
    passes = models.PositiveIntegerField(default=0, help_text="Targeted passes since it started.")
    transitions = models.PositiveIntegerField(default=0, help_text="Ledger rows those passes wrote.")
    last_pass_at = models.DateTimeField(null=True, blank=True)
    last_pass_ms = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ("host",)

    def __str__(self):
        return self.host

    def state(self, now=None):
        """Stopped (cleanly), silent (no beat within CONTROLROOM_WATCH_STALE_AFTER seconds) or watching."""
        now = now or timezone.now()
        if self.stopped_at is not None:
            return self.State.STOPPED
        if self.beat_at < now - timedelta(seconds=settings.CONTROLROOM["WATCH_STALE_AFTER"]):
            return self.State.SILENT
        return self.State.WATCHING


class WorkerProfile(models.Model):
    """A named way of launching a worker: provider, exact model, flags. No default model exists."""

    LAUNCHABLE_PROVIDERS = (Provider.CLAUDE, Provider.CODEX)

    name = models.SlugField(max_length=100, unique=True)
    provider = models.CharField(max_length=12, choices=[(p.value, p.label) for p in LAUNCHABLE_PROVIDERS])
    model = models.CharField(
        max_length=100, validators=[validate_model_name], help_text="The exact model name passed to the CLI."
    )
    max_turns = models.PositiveIntegerField(null=True, blank=True, help_text="Claude only.")
    max_budget_usd = models.DecimalField(
        max_digits=8, decimal_places=2, null=True, blank=True, help_text="Claude only."
    )
    effort = models.CharField(
        max_length=20, blank=True, help_text="Codex reasoning effort (model_reasoning_effort), e.g. high."
    )
    extra_args = models.JSONField(
        default=list, blank=True, help_text='Extra CLI arguments, as a JSON list: ["--flag", "value"].'
    )
    # Prices of the profile's model, to cost runs whose CLI reports tokens but no cost (Codex).
    input_price_per_mtok = models.DecimalField(
        max_digits=10, decimal_places=4, null=True, blank=True, help_text="USD per million input tokens."
    )
    cached_input_price_per_mtok = models.DecimalField(
        max_digits=10,
        decimal_places=4,
        null=True,
        blank=True,
        help_text="USD per million cached input tokens (blank: priced as input).",
    )
    output_price_per_mtok = models.DecimalField(
        max_digits=10, decimal_places=4, null=True, blank=True, help_text="USD per million output tokens."
    )
    auto_resume = models.BooleanField(
        default=False, help_text="Resume this profile's usage-limited runs when the limit resets."
    )
    daily_budget_usd = models.DecimalField(
        max_digits=10, decimal_places=2, null=True, blank=True, help_text="Launches stop once today's spend reaches it."
    )
    total_budget_usd = models.DecimalField(
        max_digits=10, decimal_places=2, null=True, blank=True, help_text="Launches stop once total spend reaches it."
    )
    enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ("name",)
        constraints = [
            models.CheckConstraint(name="profile_has_model", condition=~Q(model="")),
            models.CheckConstraint(name="profile_provider_launchable", condition=Q(provider__in=["claude", "codex"])),
        ]

    def __str__(self):
        return self.name

    def clean(self):
        try:
            validate_extra_args(self.provider, self.extra_args)
        except ValidationError as error:
            raise ValidationError({"extra_args": error.messages}) from None


class ModelSmokeResult(models.Model):
    class Reason(models.TextChoices):
        OK = "ok", "ok"
        UNSUPPORTED_MODEL = "unsupported-model", "unsupported model"
        AUTH_MISSING = "auth-missing", "auth missing"
        CLI_MISSING = "cli-missing", "CLI missing"
        TIMEOUT = "timeout", "timeout"
        ERROR = "error", "error"

    provider = models.CharField(max_length=12, choices=Provider)
    model = models.CharField(max_length=100)
    auth_mode = models.CharField(max_length=40, blank=True)
    cli_version = models.CharField(max_length=100, blank=True)
    ok = models.BooleanField(default=False)
    reason = models.CharField(max_length=20, choices=Reason)
    message = models.TextField(blank=True)
    duration_ms = models.PositiveIntegerField(default=0)
    host = models.CharField(max_length=255, blank=True)
    checked_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ("-checked_at", "-pk")
        constraints = [
            models.CheckConstraint(
                name="smoke_ok_iff_reason_ok", condition=Q(ok=True, reason="ok") | Q(ok=False) & ~Q(reason="ok")
            ),
        ]
        indexes = [
            # Launch's "latest passing smoke result for this provider/model".
            models.Index(fields=["provider", "model", "-checked_at"], name="smoke_latest_idx"),
        ]

    def __str__(self):
        return f"{self.provider}/{self.model} {self.reason} #{self.pk}"


class ApiToken(models.Model):
    """A bearer token for the ingest API. Only its SHA-256 is stored; the token itself is shown once.

    Scope: a reporter writes runtimes (of its host, or of its one runtime, when bound); only a
    validator may post validator comments."""

    class Role(models.TextChoices):
        REPORTER = "reporter", "reporter"
        VALIDATOR = "validator", "validator"

    name = models.CharField(max_length=100)
    role = models.CharField(max_length=12, choices=Role, default=Role.REPORTER)
    host = models.CharField(max_length=255, blank=True, help_text="Bound to this host's runtimes (blank: any host).")
    runtime = models.ForeignKey(
        Runtime, null=True, blank=True, on_delete=models.CASCADE, related_name="api_tokens",
        help_text="Bound to this one runtime (a worker's own token, minted at launch).",
    )  # fmt: skip
    prefix = models.CharField(max_length=16, help_text="The token's first characters, to recognise it.")
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at", "-pk")
        constraints = [
            models.CheckConstraint(name="api_token_role_valid", condition=Q(role__in=["reporter", "validator"])),
        ]

    def __str__(self):
        return f"{self.name} ({self.prefix}…) #{self.pk}" if self.pk else self.name

    @property
    def revoked(self):
        return self.revoked_at is not None


# Notification rows live beside their logic in runtimes/notify/.
from runtimes.notify.models import AttentionEpisode, Delivery, NotificationChannel  # noqa: E402, F401
