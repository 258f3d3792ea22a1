from django.db import migrations

from tickets.roles import sync_groups_in_migration


def sync_roles(apps, schema_editor):
    # The groups get the notification models' permissions (tickets.roles lists them).
    sync_groups_in_migration(apps)


class Migration(migrations.Migration):
    dependencies = [
        ("runtimes", "0008_notifications"),
        ("tickets", "0002_roles"),
    ]

    operations = [migrations.RunPython(sync_roles, migrations.RunPython.noop)]
