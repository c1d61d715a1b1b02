"""System checks of the panel's own: what ``manage.py check --deploy`` refuses in production.

``drpanel.E001`` — the demo's users (``operator``, ``manager``, ``auditor``, ``admin`` with their
``@example.com`` addresses, whose passwords the demo prints) exist and are active in a production
database. The check reads the database only under ``--deploy`` and says nothing when the database
cannot be reached (Django's own checks report that).
"""

from django.conf import settings
from django.core.checks import Error, Tags, register
from django.db import DatabaseError


@register(Tags.security, deploy=True)
def demo_users_in_production(app_configs=None, **kwargs) -> list[Error]:
    if not settings.PRODUCTION:
        return []
    from django.contrib.auth import get_user_model

    from drpanel.demo import DEMO_USERS

    try:
        found = sorted(get_user_model().objects.filter(
            username__in=list(DEMO_USERS), email__in=[f"{name}@example.com" for name in DEMO_USERS],
            is_active=True).values_list("username", flat=True))
    except DatabaseError:
        return []
    if not found:
        return []
    return [Error(f"the demo's users are active in this production database: {', '.join(found)}",
                  hint="deactivate or delete them (their passwords were printed by `manage.py demo`)",
                  id="drpanel.E001")]
