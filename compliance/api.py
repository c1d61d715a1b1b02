"""``/api/v1/`` endpoints of compliance (audit, contacts, checklists, dashboard)."""

from compliance.api_ops import urlpatterns as ops_urlpatterns

urlpatterns: list = [*ops_urlpatterns]
