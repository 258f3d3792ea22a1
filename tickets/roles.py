"""The three staff roles and what each may do, as Django groups and permissions.

viewers read everything; operators also stop, recover and launch workers and edit profiles;
validators also record validator verdicts and close tickets. Superusers may do everything.
"""

VIEWERS = "viewers"
OPERATORS = "operators"
VALIDATORS = "validators"

# (app_label, codename) pairs.
VIEW = [
    ("tickets", "view_ticket"),
    ("tickets", "view_verdict"),
    ("tickets", "view_ticketevent"),  # the ticket's state history
    ("runtimes", "view_runtime"),
    ("runtimes", "view_livenessevent"),
    ("runtimes", "view_reconcilerheartbeat"),
    ("runtimes", "view_workerprofile"),
    ("runtimes", "view_modelsmokeresult"),
    ("runtimes", "view_notificationchannel"),  # shown redacted
    ("runtimes", "view_attentionepisode"),
    ("runtimes", "view_delivery"),
]
ROLE_PERMISSIONS = {
    VIEWERS: VIEW,
    OPERATORS: [
        *VIEW,
        ("tickets", "add_ticket"),
        ("tickets", "change_ticket"),
        ("tickets", "add_verdict"),
        ("runtimes", "change_runtime"),  # the stop and recover actions
        ("runtimes", "add_workerprofile"),
        ("runtimes", "change_workerprofile"),
        ("runtimes", "delete_workerprofile"),
        ("runtimes", "add_notificationchannel"),
        ("runtimes", "change_notificationchannel"),  # and its "send test" action
        ("runtimes", "delete_notificationchannel"),
    ],
    VALIDATORS: [
        *VIEW,
        ("tickets", "change_ticket"),
        ("tickets", "add_verdict"),
        ("tickets", "close_as_validator"),
    ],
}


def sync_groups(group_model, permission_model):
    """Create the groups and set exactly their permissions (idempotent). A permission whose model a
    later migration creates is skipped here; that migration syncs the groups again."""
    for name, pairs in ROLE_PERMISSIONS.items():
        group, _ = group_model.objects.get_or_create(name=name)
        permissions = [
            permission
            for app, codename in pairs
            for permission in permission_model.objects.filter(content_type__app_label=app, codename=codename)
        ]
        group.permissions.set(permissions)


def sync_groups_in_migration(apps):
    """The data migrations' step: create the permissions of every model that exists at this point
    of the migration graph (normally created only after migrate), then sync the groups."""
    from django.contrib.auth.management import create_permissions

    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    sync_groups(apps.get_model("auth", "Group"), apps.get_model("auth", "Permission"))
