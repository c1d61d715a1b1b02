"""Targets: creating and changing them, granting and revoking rights on them.

Each service takes the acting user as ``actor=`` (``None`` is the system: the demo seed, a
management command), checks that the actor may do it, validates, writes the change and
its audit event in one transaction.
"""

import os

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from guardian.shortcuts import assign_perm, get_user_perms, remove_perm

from compliance.audit import audit_record
from compliance.audit.actions import AuditAction
from drpanel import endpoints, secrets
from drpanel.permissions import Cap, Role, require_cap, roles_of
from restores import healthchecks
from restores.models import TARGET_RIGHTS, HealthCheck, SanityCheck, Target
from restores.sanity import Expectation, ExpectationError

TARGET_FIELDS = ("name", "environment", "description", "database_ref", "config_dir", "health_check_hosts",
                 "system", "is_active")

# Who may hold each right (DESIGN.md's role table): a grant to anyone else is refused.
RIGHT_ROLES = {
    "restore_to_target": {Role.OPERATOR.value, Role.MANAGER.value, Role.ADMIN.value},
    "approve_restore": {Role.MANAGER.value},
}


def _require_manager(actor, action: str, obj=None) -> None:
    if actor is not None:
        require_cap(actor, Cap.MANAGE_PANEL, action=action, obj=obj)


def clean_config_dir(value: str) -> str:
    """An absolute, normalised directory path (or empty for "no config")."""
    value = (value or "").strip()
    if not value:
        return ""
    if not value.startswith("/") or "\x00" in value:
        raise ValidationError("The config directory must be an absolute path.")
    normalised = os.path.normpath(value)
    if normalised == "/":
        raise ValidationError("The config directory cannot be the root directory.")
    if normalised != value.rstrip("/") or ".." in value.split("/"):
        raise ValidationError(f"Write the path without '.', '..' or repeated slashes (e.g. {normalised}).")
    try:
        endpoints.check_config_path(normalised, what="config directory")
    except endpoints.EndpointRefused as exc:
        raise ValidationError(str(exc)) from None
    return normalised


def clean_hosts(hosts) -> list[str]:
    """Health-check host entries, each a valid allowlist entry; duplicates dropped, order kept."""
    if isinstance(hosts, str):
        hosts = hosts.replace(",", "\n").splitlines()
    cleaned: list[str] = []
    for host in hosts or ():
        host = host.strip().lower()
        if not host or host in cleaned:
            continue
        try:
            healthchecks.Allowlist.parse([host])
        except ValueError as exc:
            raise ValidationError(str(exc)) from None
        cleaned.append(host)
    return cleaned


def _clean(target: Target, sanity_checks: list[dict], health_checks: list[dict]) -> tuple[list, list]:
    errors: dict[str, list[str]] = {}
    try:
        target.database_ref = secrets.validate(target.database_ref)
    except secrets.SecretReferenceError as exc:
        errors.setdefault("database_ref", []).append(str(exc))
    try:
        target.config_dir = clean_config_dir(target.config_dir)
    except ValidationError as exc:
        errors.setdefault("config_dir", []).extend(exc.messages)
    try:
        target.health_check_hosts = clean_hosts(target.health_check_hosts)
    except ValidationError as exc:
        errors.setdefault("health_check_hosts", []).extend(exc.messages)
    try:
        target.full_clean(exclude=["database_ref", "config_dir", "health_check_hosts"])
    except ValidationError as exc:
        for field_name, messages in exc.message_dict.items():
            errors.setdefault(field_name, []).extend(messages)
    sanity = []
    for n, check in enumerate(sanity_checks):
        name, query, expectation = (str(check.get(k) or "").strip() for k in ("name", "query", "expectation"))
        if not (name and query and expectation):
            errors.setdefault("sanity_checks", []).append(
                f"Sanity check {n + 1} needs a name, a query and an expectation.")
            continue
        try:
            expectation = Expectation.parse(expectation).text
        except ExpectationError as exc:
            errors.setdefault("sanity_checks", []).append(f"Sanity check “{name}”: {exc}")
            continue
        sanity.append({"name": name[:100], "query": query[:4000], "expectation": expectation})
    health = []
    allowlist = None
    if "health_check_hosts" not in errors:
        allowlist = healthchecks.allowlist_for(target.health_check_hosts)
    for check in health_checks:
        url = str(check.get("url") or "").strip()
        try:
            status = int(check.get("expected_status") or 200)
        except (TypeError, ValueError):
            status = 0
        if not 100 <= status <= 599:
            errors.setdefault("health_checks", []).append(f"{url}: the expected status must be 100–599.")
            continue
        if allowlist is not None:
            try:
                url = healthchecks.validate_url(url, allowlist)
            except healthchecks.HealthCheckRefused as exc:
                errors.setdefault("health_checks", []).append(f"{url or 'A URL'}: {exc}")
                continue
        health.append({"url": url, "expected_status": status})
    if errors:
        raise ValidationError(errors)
    return sanity, health


def _snapshot(target: Target) -> dict:
    return {
        **{name: getattr(target, name) for name in TARGET_FIELDS if name != "system"},
        "system": target.system.name if target.system_id else None,
        "sanity_checks": [{"name": c.name, "query": c.query, "expectation": c.expectation}
                          for c in target.sanity_checks.all()],
        "health_checks": [{"url": c.url, "expected_status": c.expected_status} for c in target.health_checks.all()],
    }


def _replace_checks(target: Target, sanity: list[dict], health: list[dict]) -> None:
    target.sanity_checks.all().delete()
    target.health_checks.all().delete()
    SanityCheck.objects.bulk_create(SanityCheck(target=target, position=n, **c) for n, c in enumerate(sanity))
    HealthCheck.objects.bulk_create(HealthCheck(target=target, position=n, **c) for n, c in enumerate(health))


def target_create(*, actor, sanity_checks: list[dict] = (), health_checks: list[dict] = (), **fields) -> Target:
    """Create a target with its checks (Admin only). Raises ``ValidationError`` with per-field messages."""
    _require_manager(actor, "target.create")
    unknown = set(fields) - set(TARGET_FIELDS)
    if unknown:
        raise TypeError(f"unknown target fields: {', '.join(sorted(unknown))}")
    target = Target(**fields)
    sanity, health = _clean(target, list(sanity_checks), list(health_checks))
    with transaction.atomic():
        target.save(force_insert=True)
        _replace_checks(target, sanity, health)
        audit_record(actor=actor, action=AuditAction.TARGET_CREATED, obj=target, details=_snapshot(target))
    return target


def target_update(*, actor, target: Target, sanity_checks: list[dict] | None = None,
                  health_checks: list[dict] | None = None, **fields) -> Target:
    """Change a target and, when given, replace its checks (Admin only); audited with before/after."""
    _require_manager(actor, "target.update", target)
    unknown = set(fields) - set(TARGET_FIELDS)
    if unknown:
        raise TypeError(f"unknown target fields: {', '.join(sorted(unknown))}")
    with transaction.atomic():
        # Lock the row: two admins saving at once must not interleave checks and audit events.
        target = Target.objects.select_for_update().get(pk=target.pk)
        before = _snapshot(target)
        for name, value in fields.items():
            setattr(target, name, value)
        sanity, health = _clean(
            target,
            before["sanity_checks"] if sanity_checks is None else list(sanity_checks),
            before["health_checks"] if health_checks is None else list(health_checks),
        )
        target.updated_at = timezone.now()
        target.save(update_fields=[*TARGET_FIELDS, "updated_at"])
        _replace_checks(target, sanity, health)
        after = _snapshot(target)
        changes = {key: {"from": before[key], "to": after[key]} for key in after if before[key] != after[key]}
        if changes:
            audit_record(actor=actor, action=AuditAction.TARGET_UPDATED, obj=target, details={"changes": changes})
    return target


def _check_right(right: str) -> str:
    if right not in TARGET_RIGHTS:
        raise ValidationError(f"Unknown right {right!r}; the rights are {', '.join(TARGET_RIGHTS)}.")
    return right


def target_right_grant(*, actor, target: Target, user, right: str) -> bool:
    """Give ``user`` a right on ``target`` (Admin only); False (and no event) if they already hold it.

    ``restore_to_target`` goes only to Operators, Managers and Admins; ``approve_restore``
    only to Managers (DESIGN.md's role table).
    """
    _require_manager(actor, "target.right_grant", target)
    right = _check_right(right)
    if not user.is_active:
        raise ValidationError(f"{user.get_username()} is deactivated.")
    roles = set(roles_of(user))
    allowed = RIGHT_ROLES[right]
    if not roles & allowed:
        raise ValidationError(f"{right} can only be granted to {' or '.join(sorted(allowed))}s; "
                              f"{user.get_username()} is {', '.join(sorted(roles)) or 'in no role'}.")
    with transaction.atomic():
        Target.objects.select_for_update().filter(pk=target.pk).first()
        if right in get_user_perms(user, target):
            return False
        assign_perm(right, user, target)
        audit_record(actor=actor, action=AuditAction.TARGET_RIGHT_GRANTED, obj=target,
                     details={"right": right, "user": user.get_username(), "user_id": user.pk,
                              "target": target.name, "environment": target.environment})
    return True


def target_right_revoke(*, actor, target: Target, user, right: str) -> bool:
    """Take a right on ``target`` away from ``user`` (Admin only); False (and no event) if not held."""
    _require_manager(actor, "target.right_revoke", target)
    right = _check_right(right)
    with transaction.atomic():
        Target.objects.select_for_update().filter(pk=target.pk).first()
        if right not in get_user_perms(user, target):
            return False
        remove_perm(right, user, target)
        audit_record(actor=actor, action=AuditAction.TARGET_RIGHT_REVOKED, obj=target,
                     details={"right": right, "user": user.get_username(), "user_id": user.pk,
                              "target": target.name, "environment": target.environment})
    return True
