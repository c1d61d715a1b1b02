"""Reads of the restores app: which targets a user may see, and who holds which right on one.

Who may see a target (the list page and ``GET /api/v1/targets``):

- users who manage the panel (Admin) or read the audit trail (Auditor, Manager) see every
  target: the audit trail names them all anyway;
- everyone else with a role sees the targets they hold ``restore_to_target`` or
  ``approve_restore`` on, and no other.
"""

from django.contrib.auth import get_user_model
from django.db.models import Q
from django.http import Http404
from guardian.shortcuts import get_objects_for_user, get_user_perms, get_users_with_perms

from drpanel.permissions import Cap, has_cap
from restores.models import TARGET_RIGHTS, RestoreRun, Target, VerificationRun


def sees_all_targets(user) -> bool:
    """Admins, auditors and managers see every target (see the module docstring)."""
    return has_cap(user, Cap.MANAGE_PANEL) or has_cap(user, Cap.READ_AUDIT)


def visible_targets(user):
    """The targets ``user`` may see (see the module docstring), ordered by name."""
    if not has_cap(user, Cap.VIEW_PANEL):
        return Target.objects.none()
    if sees_all_targets(user):
        return Target.objects.all()
    return get_objects_for_user(user, [f"restores.{right}" for right in TARGET_RIGHTS], klass=Target,
                                any_perm=True, accept_global_perms=False, with_superuser=False).order_by("name")


def access_target(user, pk) -> Target:
    """The target ``pk`` if ``user`` may see it; the same 404 for "missing" and "not yours"."""
    try:
        return visible_targets(user).get(pk=pk)
    except (Target.DoesNotExist, ValueError, TypeError):
        raise Http404("No such target.") from None


def rights_of(user, target: Target) -> list[str]:
    """The per-target rights ``user`` holds on ``target`` directly (codenames, in a fixed order)."""
    if not getattr(user, "is_authenticated", False) or not user.is_active:
        return []
    held = set(get_user_perms(user, target))
    return [right for right in TARGET_RIGHTS if right in held]


def right_holders(target: Target) -> dict[str, list]:
    """``{right: [users holding it on target directly]}``, users ordered by username."""
    users = get_users_with_perms(target, attach_perms=True, with_superusers=False, with_group_users=False)
    holders: dict[str, list] = {right: [] for right in TARGET_RIGHTS}
    for user, perms in sorted(users.items(), key=lambda item: item[0].get_username()):
        for right in TARGET_RIGHTS:
            if right in perms:
                holders[right].append(user)
    return holders


def grantable_users():
    """Active users with a role, for the grant form (eligibility per right is checked by the service)."""
    return get_user_model().objects.filter(is_active=True, groups__isnull=False).distinct().order_by("username")


# --- runs ------------------------------------------------------------------------------------


def visible_runs(user):
    """Restore runs into the targets ``user`` may see, newest first.

    PostgreSQL's planner searches the join orders of one statement, and its time grows fast with the relations:
    the runs join six of theirs, and the relations a run seldom has (who decided, who rolled back, the system and
    location of a recovery) come in a query each for the whole page (4.1 ms of planning with them joined, 0.7 ms
    without, for under 0.4 ms of execution). The targets of a user who does not see them all are read first and
    the runs filtered by their ids: written as a subquery, guardian's rights made sixteen relations, 15 ms to plan.
    """
    runs = RestoreRun.objects.select_related("artifact__system", "target", "requested_by", "approval").prefetch_related(
        "approval__decided_by", "rolled_back_by", "recovery_system", "recovery_location")
    if not has_cap(user, Cap.VIEW_PANEL):
        return runs.none()
    if sees_all_targets(user):
        return runs
    return runs.filter(target_id__in=list(visible_targets(user).values_list("pk", flat=True)))


def access_run(user, pk):
    """The restore run ``pk`` if its target is visible to ``user``; the same 404 for "missing" and "not yours"."""
    try:
        return visible_runs(user).get(pk=pk)
    except (RestoreRun.DoesNotExist, ValueError, TypeError):
        raise Http404("No such restore run.") from None


def access_verification(user, pk):
    """A verification run (every role that views the panel sees every artifact, hence every verification)."""
    if not has_cap(user, Cap.VIEW_PANEL):
        raise Http404("No such verification.")
    try:
        return VerificationRun.objects.select_related("artifact__system", "requested_by").get(pk=pk)
    except (VerificationRun.DoesNotExist, ValueError, TypeError):
        raise Http404("No such verification.") from None


def restorable_targets(user, artifact=None):
    """Active targets ``user`` holds ``restore_to_target`` on (and that accept ``artifact``'s system)."""
    targets = get_objects_for_user(user, "restores.restore_to_target", klass=Target, accept_global_perms=False,
                                   with_superuser=False).filter(is_active=True)
    if artifact is not None:
        targets = targets.filter(Q(system__isnull=True) | Q(system_id=artifact.system_id))
    return targets.order_by("name")


def restore_running(system) -> bool:
    """``DRPANEL_RESTORE_RUNNING_HOOK``: is a restore of one of ``system``'s artifacts in flight?

    Retention and deletions wait while it is (``backups.hooks.restore_running``).
    """
    return RestoreRun.objects.filter(state__in=RestoreRun.ACTIVE_STATES).filter(
        Q(artifact__system=system) | Q(config_artifact__system=system) | Q(recovery_system=system)).exists()


def latest_verifications(artifact, limit: int = 20):
    return VerificationRun.objects.filter(artifact=artifact).select_related("requested_by")[:limit]


def latest_measurements() -> dict:
    """The newest measured RTO and RPO (succeeded restores and drills), for the dashboard and certifications.

    ``{"rto_seconds", "rpo_seconds", "run", "target", "environment", "drill", "finished_at"}``, all
    None when no restore has succeeded yet: the panel shows no figure it did not measure.
    """
    run = RestoreRun.objects.filter(state=RestoreRun.State.SUCCEEDED, rto_seconds__isnull=False).select_related(
        "target").order_by("-finished_at").first()
    if run is None:
        return dict.fromkeys(("rto_seconds", "rpo_seconds", "run", "target", "environment", "drill", "finished_at"))
    return {"rto_seconds": run.rto_seconds, "rpo_seconds": run.rpo_seconds, "run": str(run.pk),
            "target": run.target.name, "environment": run.target.environment, "drill": run.is_drill,
            "finished_at": run.finished_at.isoformat()}
