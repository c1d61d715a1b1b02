"""Create the four roles (groups) with the capabilities of DESIGN.md's role table.

The capability list is frozen here on purpose: a migration must not change meaning when
``drpanel.permissions`` changes later; a later migration changes the grants instead.
"""

from django.contrib.auth.management import create_permissions
from django.db import migrations

ROLES = {
    "Operator": ["view_panel", "start_jobs", "tick_checklists"],
    "Manager": ["view_panel", "start_jobs", "tick_checklists", "sign_certification", "edit_contacts", "read_audit"],
    "Auditor": ["view_panel", "read_audit"],
    "Admin": ["view_panel", "start_jobs", "edit_contacts", "read_audit", "manage_panel"],
}
# Admins manage users and groups through the admin site.
ADMIN_AUTH_PERMISSIONS = [
    "add_user", "change_user", "view_user", "add_group", "change_group", "view_group", "view_permission",
]


def create_roles(apps, schema_editor):
    # Permissions are normally created after all migrations; these need them now.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for role, codenames in ROLES.items():
        group, _ = Group.objects.get_or_create(name=role)
        perms = list(Permission.objects.filter(content_type__app_label="drpanel", codename__in=codenames))
        if role == "Admin":
            perms += list(Permission.objects.filter(content_type__app_label="auth",
                                                    codename__in=ADMIN_AUTH_PERMISSIONS))
        group.permissions.add(*perms)


def remove_roles(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=ROLES).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("drpanel", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(create_roles, remove_roles)]
