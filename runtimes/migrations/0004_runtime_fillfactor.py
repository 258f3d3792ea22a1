from django.db import migrations


def set_fillfactor(apps, schema_editor):
    # last_seen_at and the class fields are in no index: with free space left on each page,
    # PostgreSQL rewrites them as heap-only (HOT) updates and touches no index.
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("ALTER TABLE runtimes_runtime SET (fillfactor = 70)")


def reset_fillfactor(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("ALTER TABLE runtimes_runtime RESET (fillfactor)")


class Migration(migrations.Migration):
    dependencies = [("runtimes", "0003_profile_effort_help")]

    operations = [migrations.RunPython(set_fillfactor, reset_fillfactor)]
