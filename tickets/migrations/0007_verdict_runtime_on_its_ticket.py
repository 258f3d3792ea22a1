"""A verdict's runtime belongs to the verdict's ticket, enforced by the database (a foreign key
cannot say it: Django has no composite foreign keys), on SQLite and PostgreSQL; every role may read
a ticket's state history."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

from tickets.roles import sync_groups

MESSAGE = "verdict_runtime_on_its_ticket: a verdict's runtime must belong to the verdict's ticket"
QUOTED = "'" + MESSAGE.replace("'", "''") + "'"

SQLITE = [
    f"""CREATE TRIGGER verdict_runtime_on_its_ticket_insert BEFORE INSERT ON tickets_verdict
    WHEN NEW.runtime_id IS NOT NULL
     AND NEW.ticket_id IS NOT (SELECT ticket_id FROM runtimes_runtime WHERE id = NEW.runtime_id)
    BEGIN SELECT RAISE(ABORT, {QUOTED}); END""",
    f"""CREATE TRIGGER verdict_runtime_on_its_ticket_update BEFORE UPDATE OF ticket_id, runtime_id ON tickets_verdict
    WHEN NEW.runtime_id IS NOT NULL
     AND NEW.ticket_id IS NOT (SELECT ticket_id FROM runtimes_runtime WHERE id = NEW.runtime_id)
    BEGIN SELECT RAISE(ABORT, {QUOTED}); END""",
    f"""CREATE TRIGGER runtime_keeps_its_verdicts_ticket BEFORE UPDATE OF ticket_id ON runtimes_runtime
    WHEN EXISTS (SELECT 1 FROM tickets_verdict v WHERE v.runtime_id = NEW.id AND v.ticket_id != NEW.ticket_id)
    BEGIN SELECT RAISE(ABORT, {QUOTED}); END""",
]
SQLITE_DROP = [
    "DROP TRIGGER IF EXISTS verdict_runtime_on_its_ticket_insert",
    "DROP TRIGGER IF EXISTS verdict_runtime_on_its_ticket_update",
    "DROP TRIGGER IF EXISTS runtime_keeps_its_verdicts_ticket",
]

POSTGRES = [
    f"""CREATE FUNCTION verdict_runtime_on_its_ticket() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF NEW.runtime_id IS NOT NULL
         AND NEW.ticket_id IS DISTINCT FROM (SELECT ticket_id FROM runtimes_runtime WHERE id = NEW.runtime_id) THEN
        RAISE EXCEPTION {QUOTED} USING ERRCODE = 'check_violation';
      END IF;
      RETURN NEW;
    END $$""",
    """CREATE TRIGGER verdict_runtime_on_its_ticket BEFORE INSERT OR UPDATE OF ticket_id, runtime_id
    ON tickets_verdict FOR EACH ROW EXECUTE FUNCTION verdict_runtime_on_its_ticket()""",
    f"""CREATE FUNCTION runtime_keeps_its_verdicts_ticket() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF EXISTS (SELECT 1 FROM tickets_verdict v WHERE v.runtime_id = NEW.id AND v.ticket_id <> NEW.ticket_id) THEN
        RAISE EXCEPTION {QUOTED} USING ERRCODE = 'check_violation';
      END IF;
      RETURN NEW;
    END $$""",
    """CREATE TRIGGER runtime_keeps_its_verdicts_ticket BEFORE UPDATE OF ticket_id
    ON runtimes_runtime FOR EACH ROW EXECUTE FUNCTION runtime_keeps_its_verdicts_ticket()""",
]
POSTGRES_DROP = [
    "DROP TRIGGER IF EXISTS verdict_runtime_on_its_ticket ON tickets_verdict",
    "DROP FUNCTION IF EXISTS verdict_runtime_on_its_ticket()",
    "DROP TRIGGER IF EXISTS runtime_keeps_its_verdicts_ticket ON runtimes_runtime",
    "DROP FUNCTION IF EXISTS runtime_keeps_its_verdicts_ticket()",
]


def detach_forged_runtimes(apps, schema_editor):
    """Verdicts already naming another ticket's runtime lose that link (their text stays)."""
    Verdict = apps.get_model("tickets", "Verdict")
    for verdict in Verdict.objects.filter(runtime__isnull=False).select_related("runtime"):
        if verdict.runtime.ticket_id != verdict.ticket_id:
            Verdict.objects.filter(pk=verdict.pk).update(runtime=None)


def run(statements):
    def apply(apps, schema_editor):
        for sql in statements.get(schema_editor.connection.vendor, ()):
            schema_editor.execute(sql, params=None)

    return apply


CREATE = {"sqlite": SQLITE, "postgresql": POSTGRES}
DROP = {"sqlite": SQLITE_DROP, "postgresql": POSTGRES_DROP}


def sync_roles(apps, schema_editor):
    # Every role may read a ticket's state history (TicketEvent, created by 0006).
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    sync_groups(apps.get_model("auth", "Group"), apps.get_model("auth", "Permission"))


class Migration(migrations.Migration):
    dependencies = [
        ("tickets", "0006_ticket_history_verdict_recorder"),
    ]

    operations = [
        migrations.RunPython(detach_forged_runtimes, migrations.RunPython.noop),
        migrations.RunPython(run(CREATE), run(DROP)),
        migrations.RunPython(sync_roles, migrations.RunPython.noop),
    ]
