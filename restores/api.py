"""``/api/v1/`` endpoints of verifications, targets and restores."""

urlpatterns: list = []
