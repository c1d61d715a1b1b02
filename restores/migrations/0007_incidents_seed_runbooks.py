"""Seed version 1 of each scenario's runbook from the old guide (``restores.runbook_seed``)."""

from django.db import migrations

# Plain data; a database already migrated keeps what it seeded (admins' edits are new versions).
from restores.runbook_seed import SEED


def seed(apps, schema_editor):
    RunbookTemplate = apps.get_model("restores", "RunbookTemplate")
    for scenario, runbook in SEED.items():
        RunbookTemplate.objects.get_or_create(scenario=scenario, version=1, defaults={
            "title": runbook["title"], "steps": runbook["steps"], "note": "seeded from the recovery guide"})


def unseed(apps, schema_editor):
    apps.get_model("restores", "RunbookTemplate").objects.filter(version=1, created_by=None).delete()


class Migration(migrations.Migration):
    dependencies = [("restores", "0006_incidents_models")]

    operations = [migrations.RunPython(seed, unseed)]
