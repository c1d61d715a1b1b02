from django.apps import AppConfig
from django.db.models.signals import post_migrate


class DrpanelConfig(AppConfig):
    name = "drpanel"
    verbose_name = "DR Panel"

    def ready(self) -> None:
        # In ready(), not at the top: these modules use models, which need the loaded app registry.
        from drpanel import checks, signals  # noqa: F401 - registers the checks, connects the sign-in audit receivers
        from drpanel.permissions import ensure_roles

        post_migrate.connect(ensure_roles, sender=self)
