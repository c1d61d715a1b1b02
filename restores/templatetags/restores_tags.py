"""Template helpers of the restores pages: human durations, and the verification/restore panel of an artifact."""

from django import template

from backups.hooks import VERIFICATION_LEVELS
from drpanel.permissions import Cap, has_cap
from restores.models import BASE_LEVELS, RestoreRun, VerificationRun
from restores.requests import DATABASE_FORMATS
from restores.selectors import restorable_targets, visible_runs

register = template.Library()


@register.filter
def seconds(value) -> str:
    """``42.3`` → ``42.3 s``; ``125`` → ``2 min 5 s``; ``7300`` → ``2 h 1 min``; None → ``—``."""
    if value is None or value == "":
        return "—"
    value = float(value)
    if value < 10:
        return f"{value:.2f} s"
    if value < 60:
        return f"{value:.1f} s"
    if value < 3600:
        minutes, rest = divmod(int(round(value)), 60)
        return f"{minutes} min {rest} s"
    if value < 86400 * 2:
        hours, rest = divmod(int(round(value)), 3600)
        return f"{hours} h {rest // 60} min"
    days, rest = divmod(int(round(value)), 86400)
    return f"{days} d {rest // 3600} h"


@register.filter
def milliseconds(value) -> str:
    return "—" if value is None else seconds(float(value) / 1000)


@register.inclusion_tag("restores/_artifact_panel.html", takes_context=True)
def artifact_restore_panel(context, artifact):
    """On an artifact's page: its last verification, the verify buttons, its history, and "Restore…"."""
    user = context["request"].user
    restorable = (artifact.status == "available" and (
        (artifact.kind == "full" and artifact.format in DATABASE_FORMATS)
        or (artifact.kind == "config" and artifact.format == "config_tar")))
    levels = (VERIFICATION_LEVELS if artifact.kind in ("full", "config")
              else BASE_LEVELS if artifact.kind == "base" else VERIFICATION_LEVELS[:2])
    return {
        "artifact": artifact, "request": context["request"], "csrf_token": context.get("csrf_token"),
        "levels": levels, "default_level": "manifest" if artifact.kind == "base" else "decrypt",
        "can_verify": has_cap(user, Cap.START_JOBS) and artifact.status == "available",
        "can_restore": restorable and has_cap(user, Cap.START_JOBS)
        and restorable_targets(user, artifact).exists(),
        "verifications": VerificationRun.objects.filter(artifact=artifact).select_related("requested_by")[:10],
        "restores": visible_runs(user).filter(artifact=artifact)[:10],
        "active_states": RestoreRun.ACTIVE_STATES,
    }
