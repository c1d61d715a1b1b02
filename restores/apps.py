from django.apps import AppConfig


class RestoresConfig(AppConfig):
    name = "restores"
    verbose_name = "Restores"

    def ready(self) -> None:
        from restores import (
            evidence,  # noqa: F401 - registers the weekly checklist's validator
            incident_evidence,  # noqa: F401 - drills as evidence of the runbook and drill items
        )
