"""``/api/v1/`` endpoints of the backup catalog (systems, backups, artifacts)."""

urlpatterns: list = []
