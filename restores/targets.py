"""Targets: creating and changing them, granting and revoking rights on them.

Each service takes the acting user as ``actor=`` (``None`` is the system: the demo seed, a
management command), checks that the actor may do it, validates, writes the change and
its audit event in one transaction.

Changes that weaken protection wait for a second person (DESIGN.md's trust boundary): moving a
production target out of production, changing a target's database or config directory, and granting
``approve_restore``. ``target_update`` and ``target_right_grant`` then return the pending ``Approval``;
``target_change_approve`` / ``target_right_grant_approve`` apply exactly the approved change
(``target_change_apply`` refuses it if the target changed after the request).
Strengthening changes (into production, deactivating, new checks) apply at once, as does a new target;
a staging or scratch target may never name a production target's database.
"""

import os

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from guardian.shortcuts import assign_perm, get_user_perms, remove_perm

from compliance.audit import audit_record
from compliance.audit.actions import AuditAction
from drpanel import endpoints, secrets
from drpanel.approvals import (
    approval_consume,
    canonical_params,
    protection_change_apply,
    protection_change_approve,
    protection_change_request,
)
from drpanel.models import Approval
from drpanel.permissions import Cap, Role, require_cap, roles_of
from restores import healthchecks, wholeserver
from restores.models import TARGET_RIGHTS, HealthCheck, SanityCheck, Target
from restores.sanity import Expectation, ExpectationError

TARGET_FIELDS = ("name", "environment", "description", "database_ref", "config_dir", "health_check_hosts",
                 "system", "is_active", "worker_pool", "kind", "server_data_dir", "server_port", "server_user")

TARGET_CHANGE_APPROVAL = "target.change"
RIGHT_GRANT_APPROVAL = "target.right_grant"
# Fields whose change can turn a target into an unapproved restore path into something that matters, or (the
# worker pool) move its restores onto other hosts, or onto none, or (a server target's) where a new server goes.
GUARDED_FIELDS = ("database_ref", "config_dir", "worker_pool", "kind", "server_data_dir", "server_port",
                  "server_user")

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
    if target.environment != Target.Environment.PRODUCTION and "database_ref" not in errors:
        production = (Target.objects.filter(environment=Target.Environment.PRODUCTION,
                                            database_ref=target.database_ref).exclude(pk=target.pk).first())
        if production is not None:
            errors.setdefault("database_ref", []).append(
                f"This is the database of the production target “{production.name}”: a {target.environment} "
                "target cannot name it (restores into it would need no approval).")
    try:
        target.config_dir = clean_config_dir(target.config_dir)
    except ValidationError as exc:
        errors.setdefault("config_dir", []).extend(exc.messages)
    _clean_server(target, errors)
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


def _clean_server(target: Target, errors: dict) -> None:
    """A server target names a data directory under the deployment's roots, a port and an OS user (not root);
    a database target names none of them."""
    target.server_data_dir = (target.server_data_dir or "").strip()
    target.server_user = (target.server_user or "").strip()
    if target.kind != Target.Kind.SERVER:
        if target.server_data_dir or target.server_port or target.server_user:
            errors.setdefault("kind", []).append("Only a server target names a data directory, a port and a user.")
        target.server_port = None
        return
    try:
        target.server_data_dir = wholeserver.check_data_dir_setting(target.server_data_dir)
    except wholeserver.ServerTargetRefused as exc:
        message = str(exc)
        errors.setdefault("server_data_dir", []).append(message[:1].upper() + message[1:] + ".")
    if not target.server_port:
        errors.setdefault("server_port", []).append("A server target needs the port of its new server.")
    if not target.server_user:
        errors.setdefault("server_user", []).append("A server target needs the OS user that runs its new server.")
    elif target.server_user == "root":
        errors.setdefault("server_user", []).append("PostgreSQL does not run as root.")


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


def _weakens(before: dict, target: Target) -> list[str]:
    """The reasons a change of ``target`` (unsaved) from ``before`` weakens protection."""
    reasons = []
    if before["environment"] == Target.Environment.PRODUCTION and target.environment != before["environment"]:
        reasons.append(f"production → {target.environment}")
    reasons.extend(f"{name} changed" for name in GUARDED_FIELDS if getattr(target, name) != before[name])
    return reasons


def _field_values(target: Target, names) -> dict:
    """The cleaned values of the changed fields, JSON-stable (``system`` by id)."""
    return canonical_params({("system_id" if name == "system" else name):
                             (target.system_id if name == "system" else getattr(target, name)) for name in names})


def _change_params(target: Target, change: dict) -> dict:
    """What an approval of a target change binds: the change, and the target as it stands now."""
    return {"change": change, "before": canonical_params(_snapshot(target))}


def _write(*, actor, target: Target, before: dict, sanity: list, health: list, approval: Approval | None = None,
           request=None) -> Target:
    """Save a locked, cleaned target and its checks; audit what changed (inside the caller's transaction)."""
    target.updated_at = timezone.now()
    target.save(update_fields=[*TARGET_FIELDS, "updated_at"])
    _replace_checks(target, sanity, health)
    after = _snapshot(target)
    changes = {key: {"from": before[key], "to": after[key]} for key in after if before[key] != after[key]}
    if changes:
        details = {"changes": changes}
        if approval is not None:
            details.update(approval=approval.pk, requested_by=approval.requested_by.get_username(),
                           approved_by=approval.decided_by.get_username())
        audit_record(actor=actor, action=AuditAction.TARGET_UPDATED, obj=target, request=request, details=details)
    return target


def target_update(*, actor, target: Target, sanity_checks: list[dict] | None = None,
                  health_checks: list[dict] | None = None, request=None, **fields) -> Target | Approval:
    """Change a target and, when given, replace its checks (Admin only); audited with before/after.

    A change that weakens protection (see ``_weakens``) is not applied: it becomes a pending ``Approval``
    (returned) that another Manager or Admin decides with ``target_change_approve``."""
    _require_manager(actor, "target.update", target)
    unknown = set(fields) - set(TARGET_FIELDS)
    if unknown:
        raise TypeError(f"unknown target fields: {', '.join(sorted(unknown))}")
    with transaction.atomic():
        # Lock the row: two admins saving at once must not interleave checks and audit events.
        target = Target.objects.select_for_update().get(pk=target.pk)
        before = _snapshot(target)
        before_env, before_guarded = target.environment, {name: getattr(target, name) for name in GUARDED_FIELDS}
        for name, value in fields.items():
            setattr(target, name, value)
        sanity, health = _clean(
            target,
            before["sanity_checks"] if sanity_checks is None else list(sanity_checks),
            before["health_checks"] if health_checks is None else list(health_checks),
        )
        reasons = _weakens({"environment": before_env, **before_guarded}, target)
        if actor is not None and reasons:
            change = {"fields": _field_values(target, fields), "sanity_checks": sanity, "health_checks": health}
            current = Target.objects.get(pk=target.pk)
            return protection_change_request(actor=actor, kind=TARGET_CHANGE_APPROVAL, subject=current,
                                             params=_change_params(current, change),
                                             reason="; ".join(reasons), request=request)
        return _write(actor=actor, target=target, before=before, sanity=sanity, health=health, request=request)


def target_change_approve(*, actor, approval: Approval, password: str, request=None) -> Target:
    """Another Manager or Admin approves a pending target change with their password; it applies at once,
    exactly as asked, and only if the target has not changed since."""
    change = approval.params["change"]
    return protection_change_approve(
        actor=actor, approval=approval, password=password, params=_change_params(approval.subject, change),
        apply=lambda approved: _target_change(actor=actor, approval=approved, request=request), request=request)


def _target_change(*, actor, approval: Approval, request=None) -> Target:
    change = approval.params["change"]
    with transaction.atomic():
        locked = Target.objects.select_for_update().get(pk=approval.object_id)
        # Consumed against the target as it is now: a change made after the request voids the approval.
        approval_consume(approval=approval, params=_change_params(locked, change), actor=actor)
        before = _snapshot(locked)
        for name, value in change["fields"].items():
            setattr(locked, name, value)
        sanity, health = _clean(locked, change["sanity_checks"], change["health_checks"])
        return _write(actor=actor, target=locked, before=before, sanity=sanity, health=health, approval=approval,
                      request=request)


def target_change_apply(*, actor, approval: Approval, request=None) -> Target:
    """Carry out an approved target change once; refused (and audited) if the target changed after the request."""
    return protection_change_apply(
        actor=actor, approval=approval, request=request,
        apply=lambda approved: _target_change(actor=actor, approval=approved, request=request))


def _check_right(right: str) -> str:
    if right not in TARGET_RIGHTS:
        raise ValidationError(f"Unknown right {right!r}; the rights are {', '.join(TARGET_RIGHTS)}.")
    return right


def _grant_params(target: Target, user) -> dict:
    return {"right": "approve_restore", "user_id": user.pk, "user": user.get_username(), "active": user.is_active,
            "target": target.name, "environment": target.environment}


def _grant(*, actor, target: Target, user, right: str, approval: Approval | None = None, request=None) -> bool:
    with transaction.atomic():
        Target.objects.select_for_update().filter(pk=target.pk).first()
        if approval is not None:
            approval_consume(approval=approval, params=_grant_params(target, user), actor=actor)
        if right in get_user_perms(user, target):
            return False
        assign_perm(right, user, target)
        details = {"right": right, "user": user.get_username(), "user_id": user.pk, "target": target.name,
                   "environment": target.environment}
        if approval is not None:
            details.update(approval=approval.pk, requested_by=approval.requested_by.get_username(),
                           approved_by=approval.decided_by.get_username())
        audit_record(actor=actor, action=AuditAction.TARGET_RIGHT_GRANTED, obj=target, request=request,
                     details=details)
    return True


def target_right_grant(*, actor, target: Target, user, right: str, request=None) -> bool | Approval:
    """Give ``user`` a right on ``target`` (Admin only); False (and no event) if they already hold it.

    ``restore_to_target`` goes only to Operators, Managers and Admins; ``approve_restore``
    only to Managers (DESIGN.md's role table). Granting ``approve_restore`` waits for a second
    person: the pending ``Approval`` is returned (``target_right_grant_approve`` decides it).
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
    if actor is not None and right == "approve_restore" and right not in get_user_perms(user, target):
        return protection_change_request(actor=actor, kind=RIGHT_GRANT_APPROVAL, subject=target,
                                         params=_grant_params(target, user), request=request,
                                         reason=f"grant approve_restore to {user.get_username()}")
    return _grant(actor=actor, target=target, user=user, right=right, request=request)


def target_right_grant_approve(*, actor, approval: Approval, password: str, request=None) -> bool:
    """Another Manager or Admin (not the one who would receive the right) approves a pending grant of
    ``approve_restore``; it is granted at once, if the user still is who they were and still a Manager."""
    target = approval.subject
    user = get_user_model().objects.filter(pk=approval.params.get("user_id")).first()
    if user is None:
        raise ValidationError("The user of this request no longer exists.")

    def apply(approved: Approval) -> bool:
        if not user.is_active or not set(roles_of(user)) & RIGHT_ROLES["approve_restore"]:
            raise ValidationError(f"{user.get_username()} can no longer hold approve_restore.")
        return _grant(actor=actor, target=target, user=user, right="approve_restore", approval=approved,
                      request=request)

    return protection_change_approve(actor=actor, approval=approval, password=password,
                                     params=_grant_params(target, user), apply=apply,
                                     extra_rule=lambda approver: approver.pk != user.pk, request=request)


def target_right_revoke(*, actor, target: Target, user, right: str, request=None) -> bool:
    """Take a right on ``target`` away from ``user`` (Admin only); False (and no event) if not held."""
    _require_manager(actor, "target.right_revoke", target)
    right = _check_right(right)
    with transaction.atomic():
        Target.objects.select_for_update().filter(pk=target.pk).first()
        if right not in get_user_perms(user, target):
            return False
        remove_perm(right, user, target)
        audit_record(actor=actor, action=AuditAction.TARGET_RIGHT_REVOKED, obj=target, request=request,
                     details={"right": right, "user": user.get_username(), "user_id": user.pk,
                              "target": target.name, "environment": target.environment})
    return True
