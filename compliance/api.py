"""``/api/v1/`` endpoints of compliance (audit, contacts, checklists, dashboard)."""

urlpatterns: list = []
