from django.apps import AppConfig


class ComplianceConfig(AppConfig):
    name = "compliance"
    verbose_name = "Compliance"

    def ready(self) -> None:
        from django.db.models.signals import post_migrate

        from compliance import audit_admin, audit_signals, daily_evaluators, health_signals  # noqa: F401 - registers
        from compliance.checklists import ensure_checklist_templates

        audit_signals.connect()
        health_signals.connect()
        post_migrate.connect(ensure_checklist_templates, sender=self)
