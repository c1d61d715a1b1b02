from django.apps import AppConfig


class ComplianceConfig(AppConfig):
    name = "compliance"
    verbose_name = "Compliance"

    def ready(self) -> None:
        from compliance import audit_admin, audit_signals  # noqa: F401 - registers the read-only admin

        audit_signals.connect()
