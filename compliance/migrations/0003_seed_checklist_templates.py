"""Seed the daily, weekly and monthly checklist templates with the old guide's items."""

from django.db import migrations

from compliance.checklist_seed import seed_templates


def seed(apps, schema_editor):
    seed_templates(apps.get_model("compliance", "ChecklistTemplate"),
                   apps.get_model("compliance", "ChecklistTemplateItem"))


def unseed(apps, schema_editor):
    apps.get_model("compliance", "ChecklistTemplate").objects.all().delete()


class Migration(migrations.Migration):

    dependencies = [
        ("compliance", "0002_roster_checklists_alerts"),
    ]

    operations = [migrations.RunPython(seed, unseed)]
