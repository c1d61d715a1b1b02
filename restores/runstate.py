"""What every restore-run service shares: its errors, what an approval is bound to, its audit details,
and the conditional state transition (see ``RestoreRun``'s docstring for the allowed ones)."""

from django.contrib.contenttypes.models import ContentType

from backups.models import Artifact
from drpanel.approvals import binding_hash as approval_binding_hash
from restores.models import RestoreRun, Target

PRODUCTION_APPROVAL = "restore.production"


class RestoreError(Exception):
    """A restore cannot be requested or changed as asked; the message is for the person asking."""


class RestoreConflict(RestoreError):
    """The run (or its target) is not in a state that allows this (HTTP 409)."""


class RunFailure(Exception):
    """A step of the worker's path failed; the run fails with this message."""


# --- binding and rights ------------------------------------------------------------------------


def binding_params(*, artifact: Artifact, target: Target, mode: str, config_artifact: Artifact | None) -> dict:
    """What a production approval is bound to: any change of these voids it."""
    return {"artifact": str(artifact.pk), "artifact_sha256": artifact.sha256,
            "config_artifact": str(config_artifact.pk) if config_artifact else None,
            "target": target.pk, "target_name": target.name, "database_ref": target.database_ref,
            "config_dir": target.config_dir, "mode": mode}


def point_binding_params(*, system, point, target: Target, mode: str, location=None) -> dict:
    """What a production approval of a point-in-time restore is bound to: the system, the point, the target, and
    the off-site location recovered from (when not Barman's home)."""
    params = {"artifact": None, "system": system.pk, "system_name": system.name,
              "recovery_point": point_label(point), "target": target.pk, "target_name": target.name,
              "database_ref": target.database_ref, "config_dir": target.config_dir, "mode": mode}
    if location is not None:
        params.update(recovery_location=location.pk, recovery_location_name=location.name)
    if target.is_server:  # where the new server goes is part of what was approved
        params.update(server_data_dir=target.server_data_dir, server_port=target.server_port,
                      server_user=target.server_user)
    return params


def point_label(point) -> str:
    """A recovery point as one unambiguous string (the full ISO moment for a time)."""
    return f"time {point.time.isoformat()}" if point.kind == "time" else str(point)


def run_binding_params(run: RestoreRun) -> dict:
    if run.is_point_in_time:
        return point_binding_params(system=run.recovery_system, point=run.recovery_point, target=run.target,
                                    mode=run.mode, location=run.recovery_location)
    return binding_params(artifact=run.artifact, target=run.target, mode=run.mode, config_artifact=run.config_artifact)


def current_binding_hash(run: RestoreRun) -> str:
    """The binding hash of the run as its rows say now (compared with the approved one)."""
    return approval_binding_hash(kind=PRODUCTION_APPROVAL, content_type=ContentType.objects.get_for_model(RestoreRun),
                                 object_id=str(run.pk), params=run_binding_params(run))


def audit_details(run: RestoreRun, **extra) -> dict:
    """The details every audit event of a restore run carries, plus ``extra``."""
    return {"run": str(run.pk), "target": run.target.name, "environment": run.target.environment, "mode": run.mode,
            "artifact": str(run.artifact_id) if run.artifact_id else None,
            "config_artifact": str(run.config_artifact_id or "") or None,
            "drill": run.is_drill, "requested_by": run.requested_by.get_username(),
            **({"system": run.recovery_system.name, "recovery_point": point_label(run.recovery_point),
                "source": run.recovery_source}
               if run.is_point_in_time else {}), **extra}


def transition(run: RestoreRun, expected, new_state: str, **fields) -> bool:
    """Move ``run`` from one of ``expected`` to ``new_state``; False if it was no longer there."""
    expected = [expected] if isinstance(expected, str) else list(expected)
    changed = RestoreRun.objects.filter(pk=run.pk, state__in=expected).update(state=new_state, **fields)
    if changed:
        run.state = new_state
        for name, value in fields.items():
            setattr(run, name, value)
    return bool(changed)
