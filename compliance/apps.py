from django.apps import AppConfig
from django.db.models.signals import post_migrate


class ComplianceConfig(AppConfig):
    name = "compliance"
    verbose_name = "Compliance"

    def ready(self) -> None:
        # In ready(), not at the top: these modules use models, which need the loaded app registry.
        from compliance import daily_evaluators, escalation, health_signals  # noqa: F401 - registers
        from compliance.audit import admin, signals  # noqa: F401 - registers
        from compliance.checklists import ensure_checklist_templates

        signals.connect()
        health_signals.connect()
        escalation.connect()
        post_migrate.connect(ensure_checklist_templates, sender=self)
