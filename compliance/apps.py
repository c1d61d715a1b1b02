from django.apps import AppConfig


class ComplianceConfig(AppConfig):
    name = "compliance"
    verbose_name = "Compliance"

    def ready(self) -> None:
        from django.db.models.signals import post_migrate

        from compliance.checklists import ensure_checklist_templates

        post_migrate.connect(ensure_checklist_templates, sender=self)
