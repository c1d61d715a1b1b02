"""Demo data of the project package: one user per role, with passwords the operator can read."""

import json
import os
import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction

from drpanel.permissions import Role

DEMO_USERS = {
    "operator": Role.OPERATOR,
    "manager": Role.MANAGER,
    "auditor": Role.AUDITOR,
    "admin": Role.ADMIN,
}


def _passwords() -> dict[str, str]:
    """``DRPANEL_DEMO_PASSWORD`` for everyone, else random ones kept (mode 0600) under var/."""
    shared = os.environ.get("DRPANEL_DEMO_PASSWORD")
    if shared:
        return dict.fromkeys(DEMO_USERS, shared)
    path = settings.VAR_DIR / "demo-passwords.json"
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        stored = {}
    passwords = {name: stored.get(name) or secrets.token_urlsafe(12) for name in DEMO_USERS}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(json.dumps(passwords, indent=2))
    return passwords


@transaction.atomic
def seed_users(out) -> None:
    passwords = _passwords()
    User = get_user_model()
    for username, role in DEMO_USERS.items():
        user, _ = User.objects.get_or_create(username=username, defaults={"email": f"{username}@example.com"})
        user.set_password(passwords[username])
        user.is_staff = role == Role.ADMIN
        user.is_active = True
        user.save(update_fields=["password", "is_staff", "is_active"])
        user.groups.add(Group.objects.get(name=role.value))
    out.write("Demo users (username / password / role):")
    for username, role in DEMO_USERS.items():
        out.write(f"  {username:<9} {passwords[username]:<20} {role.value}")
