from django.contrib.auth.management import create_permissions
from django.db import migrations

from tickets.roles import sync_groups


def sync_roles(apps, schema_editor):
    # The notification models' permissions must exist before the groups are given them.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    sync_groups(apps.get_model("auth", "Group"), apps.get_model("auth", "Permission"))


class Migration(migrations.Migration):
    dependencies = [
        ("runtimes", "0008_notifications"),
        ("tickets", "0002_roles"),
    ]

    operations = [migrations.RunPython(sync_roles, migrations.RunPython.noop)]
