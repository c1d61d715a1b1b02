"""Every action the panel writes to the audit log, declared once with a one-line description.

``audit_record`` refuses an action that is not here (``UnknownAuditAction``), so a new kind
of event starts by adding a member. The audit log's filter offers these actions, and
``docs/audit-actions.md`` lists them (``manage.py audit_actions_doc`` writes it from
``actions_markdown``; a test checks that it is up to date). Values are stable: they are stored in the chain and hashed.

A test suite or a plugin that writes actions of its own declares them with
``register_action`` (the panel itself declares none there).
"""

from enum import StrEnum


class UnknownAuditAction(ValueError):
    """``audit_record`` was given an action that is not declared."""


class AuditAction(StrEnum):
    """An audit action: its value is what the chain stores, ``description`` says when it is written."""

    description: str

    def __new__(cls, value: str, description: str):
        member = str.__new__(cls, value)
        member._value_ = value
        member.description = description
        return member

    ACCESS_DENIED = "access.denied", "A request or command was refused for lack of a right (outcome denied)."

    ALERT_RAISED = "alert.raised", "A health alert was raised for a system falling into warning or critical."
    ALERT_RESOLVED = "alert.resolved", "A health alert was resolved: the system is healthy again."
    ALERT_NOTIFIED = "alert.notified", "A contact of the roster was notified of an alert."
    ALERT_ESCALATED = "alert.escalated", "Nobody acknowledged an alert in time: it escalated to the next level."
    ALERT_ESCALATION_ENDED = "alert.escalation_ended", "An alert's escalation ran out of levels to notify."
    ALERT_ACKNOWLEDGED = "alert.acknowledged", "Someone acknowledged an alert (in the panel or by a notified link)."
    ALERT_ACK_LINK_REFUSED = "alert.ack_link_refused", "An acknowledgement link was refused (bad, used or expired)."

    API_TOKEN_CREATED = "api_token.created", "A user created an API token."
    API_TOKEN_REVOKED = "api_token.revoked", "An API token was revoked."
    API_TOKEN_SCOPE_REFUSED = ("api_token.scope_refused",
                               "An API token was refused beyond its scope: a write with a read-only token, "
                               "or a metrics token anywhere but /metrics (outcome denied).")
    API_TOKEN_PASSWORD_REFUSED = ("api_token.password_refused",
                                  "A wrong password was given when creating an API token (counts toward the lockout).")

    APPROVAL_REQUESTED = "approval.requested", "A change that needs a second person asked for approval."
    APPROVAL_APPROVED = "approval.approved", "A second person approved a change with their password."
    APPROVAL_REJECTED = "approval.rejected", "A second person rejected a change."
    APPROVAL_PASSWORD_REFUSED = "approval.password_refused", "An approval was refused: the password was wrong."
    APPROVAL_EXPIRED = "approval.expired", "An approval expired before it was decided or used."
    APPROVAL_BINDING_MISMATCH = ("approval.binding_mismatch",
                                 "An approval was refused: the change differs from the one approval was asked for.")
    APPROVAL_CONSUMED = "approval.consumed", "An approved change was carried out, using up its approval."

    ARTIFACT_CATALOGUED = "artifact.catalogued", "An artifact was added to the catalog (written or found in storage)."
    ARTIFACT_STATUS = "artifact.status", "The inventory changed an artifact's status."
    ARTIFACT_COPY_STATUS = "artifact.copy_status", "The inventory changed the status of an artifact's copy."
    ARTIFACT_COPIED = "artifact.copied", "An artifact was copied to another storage location."
    ARTIFACT_DELETED = "artifact.deleted", "An artifact was deleted (retention or by hand)."
    ARTIFACT_DELETE_INCOMPLETE = ("artifact.delete_incomplete",
                                  "Some copies of a deleted artifact could not be removed from storage.")
    ARTIFACT_REWRAPPED = "artifact.rewrapped", "An artifact's data key was re-wrapped under another master key."
    ARTIFACT_COPY_REWRAP_FAILED = "artifact.copy_rewrap_failed", "Re-wrapping the data key of a copy failed."
    ARTIFACT_MANIFEST_IGNORED = ("artifact.manifest_ignored",
                                 "A manifest found in storage contradicted a known artifact and was ignored.")
    ARTIFACT_ADOPTED = ("artifact.adopted",
                        "Someone adopted a quarantined artifact; its verification up to structure was queued.")
    ARTIFACT_RELEASED = "artifact.released", "An adopted artifact passed its verification and left quarantine."
    ARTIFACT_ADOPTION_FAILED = ("artifact.adoption_failed",
                                "An adopted artifact failed its verification and stays quarantined.")
    ARTIFACT_QUARANTINE_REFUSED = ("artifact.quarantine_refused",
                                   "A restore or verification of a quarantined artifact was refused.")

    AUDIT_EXPORTED = "audit.exported", "Someone exported the audit log (before the first byte left)."
    AUDIT_KEY_ROTATED = "audit.key_rotated", "The audit signing key was rotated."
    AUDIT_VERIFIED = "audit.verified", "The audit chain was verified (intact or not, with the first broken seq)."

    AUTH_LOGIN = "auth.login", "A user signed in."
    AUTH_LOGOUT = "auth.logout", "A user signed out."
    AUTH_LOGIN_FAILED = "auth.login_failed", "A sign-in failed."
    AUTH_LOCKOUT = "auth.lockout", "Too many failed sign-ins: the account or address is locked out."
    AUTH_UNKNOWN_USER_FAILURES = ("auth.unknown_user_failures",
                                  "Failed sign-ins with usernames that do not exist, counted over one window "
                                  "(one event per window, written when it ends).")
    AUTH_REAUTHENTICATED = "auth.reauthenticated", "A signed-in user re-entered their password."
    AUTH_REAUTH_LOCKED = "auth.reauth_locked", "A password re-entry was refused: too many failures."

    BACKUP_REQUESTED = "backup.requested", "A backup of a system was asked for (by a person or the schedule)."
    BACKUP_STARTED = "backup.started", "A worker started a backup."
    BACKUP_SUCCEEDED = "backup.succeeded", "A backup finished and its artifact was stored."
    BACKUP_FAILED = "backup.failed", "A backup failed."
    BACKUP_REQUEUED = "backup.requeued", "A backup whose job was lost was queued again."

    CERTIFICATION_SIGNED = "certification.signed", "A manager signed the monthly DR certification (with its hash)."
    CERTIFICATION_BUNDLE_DOWNLOADED = ("certification.bundle_downloaded",
                                       "Someone downloaded a certification's evidence bundle.")

    CHECKLIST_PERIOD_OPENED = "checklist.period_opened", "A daily, weekly or monthly checklist period was opened."
    CHECKLIST_EVALUATED = "checklist.evaluated", "The daily checks were evaluated from data."
    CHECKLIST_TICKED = "checklist.ticked", "Someone ticked a checklist item, with evidence."
    CHECKLIST_UNTICKED = "checklist.unticked", "Someone took back a checklist tick."
    CHECKLIST_TEMPLATE_CHANGED = "checklist.template_changed", "A checklist template or one of its items changed."

    CONTACT_CREATED = "contact.created", "A contact was added to the roster."
    CONTACT_UPDATED = "contact.updated", "A contact of the roster was changed."
    CONTACT_VERIFIED = "contact.verified", "A contact's details were confirmed as current."
    CONTACT_EXPORTED = "contact.exported", "Someone exported the roster."

    DATABASE_RUNTIME_ROLE_GRANTED = ("database.runtime_role_granted",
                                     "The migration role gave the runtime database role exactly its rights "
                                     "(SELECT and INSERT only on the audit table).")

    GROUP_CREATED = "group.created", "A group (role) was created."
    GROUP_CHANGED = "group.changed", "A group (role) was renamed."
    GROUP_DELETED = "group.deleted", "A group (role) was deleted."
    GROUP_MEMBERS_CHANGED = "group.members_changed", "Users were added to or removed from a group, from its side."
    GROUP_PERMISSIONS_CHANGED = "group.permissions_changed", "A group's permissions changed."

    HEALTH_CHANGED = "health.changed", "A system's health score moved to another status."

    INVENTORY_REQUESTED = "inventory.requested", "An inventory of a storage location was asked for."
    INVENTORY_FINISHED = "inventory.finished", "An inventory of a storage location finished."
    INVENTORY_FAILED = "inventory.failed", "An inventory of a storage location failed."

    JOB_REFUSED = "job.refused", "A worker refused a job naming a run this installation does not have."

    KEYS_ROTATION_REQUESTED = "keys.rotation_requested", "A master key rotation (re-wrapping data keys) was asked for."
    KEYS_ROTATION_FINISHED = "keys.rotation_finished", "A master key rotation finished."

    LOCATION_CREATED = "location.created", "A storage location was created."
    LOCATION_UPDATED = "location.updated", "A storage location was changed."

    OBJECT_PERMISSION_GRANTED = "object_permission.granted", "An object permission (django-guardian) was granted."
    OBJECT_PERMISSION_REVOKED = "object_permission.revoked", "An object permission (django-guardian) was revoked."

    PANEL_START_REFUSED = ("panel.start_refused",
                           "A production web process refused to start: its database role could bypass the audit log.")

    PERMISSION_USERS_CHANGED = "permission.users_changed", "A permission was given to or taken from users."
    PERMISSION_GROUPS_CHANGED = ("permission.groups_changed",
                                 "A permission was given to or taken from groups.")

    ROLE_PERMISSIONS_CHANGED = ("role.permissions_changed",
                                "A group's permissions were set by the role-change service "
                                "(more for Manager or Admin only with a second person's approval).")

    RESTORE_REQUESTED = "restore.requested", "Someone asked for a restore of an artifact into a target."
    RESTORE_AWAITING_APPROVAL = "restore.awaiting_approval", "A restore into production waits for a manager's approval."
    RESTORE_APPROVED = "restore.approved", "A manager approved a restore into production."
    RESTORE_REJECTED = "restore.rejected", "A manager rejected a restore into production."
    RESTORE_EXPIRED = "restore.expired", "A restore's approval expired before it ran."
    RESTORE_QUEUED = "restore.queued", "A restore was queued for a worker."
    RESTORE_REQUEUED = "restore.requeued", "A restore whose job was lost was queued again."
    RESTORE_STARTED = "restore.started", "A worker started a restore."
    RESTORE_SWAPPED = "restore.swapped", "A restore swapped the restored copy in for the target's data."
    RESTORE_SUCCEEDED = "restore.succeeded", "A restore finished and the target is healthy."
    RESTORE_FAILED = "restore.failed", "A restore failed."
    RESTORE_REFUSED = ("restore.refused", "The worker refused a restore when it started: the requester or approver "
                       "lost their right, or the approval is older than the execution window.")
    RESTORE_CANCELLED = "restore.cancelled", "Someone cancelled a queued or running restore before its swap."
    RESTORE_CANCEL_REFUSED = ("restore.cancel_refused", "A cancel was refused: the restore had swapped in already "
                              "(roll back instead) or was not queued or running.")
    RESTORE_RECONCILED = "restore.reconciled", "The janitor finished or undid a restore's half-done swap."
    RESTORE_ROLLED_BACK = "restore.rolled_back", "A manager rolled a restore back to the pre-restore copy."
    RESTORE_ROLLBACK_FAILED = "restore.rollback_failed", "A rollback failed."
    RESTORE_ROLLBACK_PASSWORD_REFUSED = ("restore.rollback_password_refused",
                                         "A rollback was refused: the password was wrong.")
    RESTORE_COPIES_DROPPED = "restore.copies_dropped", "A restore's pre-restore copies were dropped after its window."
    RESTORE_ORPHANS_DROPPED = "restore.orphans_dropped", "Side databases left by dead restores were dropped."
    RESTORE_CHECKLIST_PASSED = "restore.checklist_passed", "The panel passed a post-recovery checklist item."
    RESTORE_CHECKLIST_FAILED = "restore.checklist_failed", "The panel failed a post-recovery checklist item."
    RESTORE_CHECKLIST_TICKED = "restore.checklist_ticked", "Someone ticked a post-recovery checklist item."
    RESTORE_CHECKLIST_REFRESHED = ("restore.checklist_refreshed",
                                   "Someone asked the panel to decide a post-recovery checklist again.")

    RETENTION_SKIPPED = "retention.skipped", "Retention deleted nothing because a restore of the system was running."

    SYSTEM_CREATED = "system.created", "A protected system was created."
    SYSTEM_UPDATED = "system.updated", "A protected system was changed."

    TARGET_CREATED = "target.created", "A restore target was created."
    TARGET_UPDATED = "target.updated", "A restore target was changed."
    TARGET_RIGHT_GRANTED = "target.right_granted", "A right on a target was granted to a user or group."
    TARGET_RIGHT_REVOKED = "target.right_revoked", "A right on a target was revoked."

    USER_CREATED = "user.created", "A user was created."
    USER_CHANGED = "user.changed", "A user's names, email, active, staff or superuser flag changed."
    USER_DELETED = "user.deleted", "A user was deleted."
    USER_PASSWORD_CHANGED = "user.password_changed", "A user's password changed (never the hash)."
    USER_PASSWORD_REHASHED = "user.password_rehashed", "Django upgraded a stored password hash at sign-in."
    USER_GROUPS_CHANGED = "user.groups_changed", "A user's groups (roles) changed, from the user's side."
    USER_ROLES_CHANGED = ("user.roles_changed",
                          "A user's roles or staff/superuser flags were set by the role-change service "
                          "(privileges only with a second person's approval).")
    USER_PERMISSIONS_CHANGED = "user.permissions_changed", "A user's own permissions changed."

    VERIFICATION_REQUESTED = "verification.requested", "A verification of an artifact was asked for."
    VERIFICATION_STARTED = "verification.started", "A worker started a verification."
    VERIFICATION_SUCCEEDED = "verification.succeeded", "A verification reached its level."
    VERIFICATION_FAILED = "verification.failed", "A verification failed (or its worker died)."
    VERIFICATION_REFUSED = ("verification.refused", "The worker refused a verification when it started: its "
                            "requester is inactive or may no longer start jobs.")
    VERIFICATION_CANCELLED = "verification.cancelled", "Someone cancelled a queued or running verification."
    VERIFICATION_REQUEUED = "verification.requeued", "A verification whose job was lost was queued again."

    # Roles with every logical full (restores onto an empty server).
    RESTORE_ROLES_CREATED = ("restore.roles_created", "A restore created the backup's roles missing on the target's "
                             "server, or found its existing roles different (never altered).")

    # Notifications (issue 15: notify).
    NOTIFICATION_CHANNEL_CREATED = ("notification_channel.created", "A manager or admin added a notification "
                                    "channel to a contact or a roster level (its secret reference, never its URL).")
    NOTIFICATION_CHANNEL_UPDATED = ("notification_channel.updated", "A notification channel was switched off or on.")
    NOTIFICATION_QUEUED = "notification.queued", "Notifications of an event were queued, one delivery per channel."
    NOTIFICATION_SENT = "notification.sent", "A delivery reached its channel."
    NOTIFICATION_RETRYING = ("notification.retrying", "A delivery failed (or timed out) and will be tried again "
                             "after a backoff.")
    NOTIFICATION_FAILED = "notification.failed", "A delivery failed its last attempt; nothing more is tried."

    # Disaster mode: incidents, their runbook steps, runbook versions and recovery objectives (issue 14).
    INCIDENT_DECLARED = "incident.declared", "An incident (or a drill) was declared on a system: its RTO clock started."
    INCIDENT_RECOVERING = "incident.recovering", "The first step of an incident's runbook started."
    INCIDENT_RECOVERED = ("incident.recovered", "Every required step of an incident was done and its health checks "
                          "passed: its RTO clock stopped.")
    INCIDENT_CLOSE_REFUSED = ("incident.close_refused", "Closing an incident was refused (required steps still open, "
                              "or no review); the reason is in the details.")
    INCIDENT_CLOSED = ("incident.closed", "A manager closed an incident with its review; the details carry the "
                       "report's content hash.")
    INCIDENT_STEP_STARTED = "incident.step_started", "A step of an incident's runbook was started (or queued)."
    INCIDENT_STEP_COMPLETED = "incident.step_completed", "A step of an incident's runbook was done."
    INCIDENT_STEP_FAILED = "incident.step_failed", "A step of an incident's runbook failed (the reason in the details)."
    INCIDENT_STEP_SKIPPED = "incident.step_skipped", "A step of an incident's runbook was skipped, with the reason."
    INCIDENT_STEP_REQUEUED = "incident.step_requeued", "An automatic incident step whose job was lost was queued again."
    RUNBOOK_EDITED = "runbook.edited", "An admin wrote a new version of a scenario's runbook."
    RECOVERY_OBJECTIVE_SET = "recovery_objective.set", "A system's RTO and RPO targets were set."
    # Escalation of incidents through the roster (compliance.escalation).
    INCIDENT_ESCALATION_STARTED = ("incident.escalation_started", "The first levels of the roster were called about a "
                                   "declared incident, with their response targets.")
    INCIDENT_ESCALATED = ("incident.escalated", "Nobody acknowledged an incident within the called levels' response "
                          "targets: the next level was called.")
    INCIDENT_ESCALATION_ENDED = ("incident.escalation_ended", "An incident's escalation stopped calling: no active "
                                 "contact left, or the incident is recovered or closed.")
    INCIDENT_ACKNOWLEDGED = ("incident.acknowledged", "Someone acknowledged an incident (the page, the API or a "
                             "notified link): its escalation stops.")
    INCIDENT_ACK_REFUSED = ("incident.ack_refused", "An incident acknowledge link was refused (forged, used, expired "
                            "or the incident closed).")

    # Continuous protection (Barman): checks, the streaming receiver, the WAL catalog.
    CONTINUOUS_CHECK_REQUESTED = "continuous.check_requested", "Someone asked a worker to run barman check on a system."
    CONTINUOUS_CHECKED = "continuous.checked", "A worker ran barman check on a system (outcome: every item passed)."
    CONTINUOUS_STREAMING_RESTARTED = ("continuous.streaming_restarted", "The WAL receiver of a system was found "
                                      "stopped and started again (its replication slot kept the WAL).")
    CONTINUOUS_RPO_OVER_TARGET = ("continuous.rpo_over_target", "A system's RPO now (since the last WAL received) "
                                  "went past its RPO target, or no WAL has been received yet.")
    CONTINUOUS_RPO_WITHIN_TARGET = "continuous.rpo_within_target", "A system's RPO now came back within its target."
    CONTINUOUS_BASE_EXPIRED = ("continuous.base_expired", "Barman's recovery window removed a base backup; its "
                               "artifact is marked deleted.")
    CONTINUOUS_WAL_GAP = ("continuous.wal_gap", "The WAL catalog of a system found a gap; it names the first missing "
                          "segment.")

    # Whole-server recovery (restores.wholeserver).
    RESTORE_SERVER_STARTED = ("restore.server_started", "A whole-server restore started the recovered server on its "
                              "target host (data directory, port, OS user, WAL position replayed).")
    RESTORE_SHIPPED = ("restore.shipped", "A whole-server restore received the directory recovered on the Barman "
                       "host (bytes, SHA-256, chunks), or refused it (a checksum mismatch, a missing chunk, a silent "
                       "or failed sender) and removed what it wrote.")
    # Continuous protection off-site: base backups and WAL batches copied encrypted, checked, recovered from.
    OFFSITE_REQUESTED = ("offsite.requested", "An off-site copy of a system's base backups and WAL was queued (after "
                         "a base backup, or by the tick when archived WAL is not off-site yet).")
    OFFSITE_STARTED = "offsite.started", "A worker started copying a system's base backups and WAL off-site."
    OFFSITE_SUCCEEDED = ("offsite.succeeded", "An off-site run ended; its details list the packages written and "
                         "those that failed.")
    OFFSITE_FAILED = "offsite.failed", "An off-site run failed (or its worker died); the reason is in the details."
    OFFSITE_REQUEUED = "offsite.requeued", "An off-site run whose job was lost was queued again."
    OFFSITE_PACKAGE_COPIED = ("offsite.package_copied", "A base backup or a WAL batch was written encrypted to an "
                              "off-site location and re-read there (outcome: its SHA-256 matched).")
    OFFSITE_PACKAGE_MISSING = ("offsite.package_missing", "A base backup or WAL batch written off-site is no longer "
                               "found there; the details name its segment range.")
    OFFSITE_PACKAGE_REWRAPPED = ("offsite.package_rewrapped", "A key rotation re-wrapped the data key of an off-site "
                                 "package under another master key (outcome: re-read and matched).")
    OFFSITE_FETCHED = ("offsite.fetched", "A recovery fetched, verified and decrypted a system's base backup and WAL "
                       "from an off-site location.")
    OFFSITE_REFUSED = ("offsite.refused", "A recovery from an off-site location was refused before anything was "
                       "written: a package failed its checksum or decryption, or a WAL batch it needs is missing.")
    OFFSITE_PACKAGE_REMOVED = ("offsite.package_removed", "Off-site retention removed a base backup or WAL batch from "
                               "its off-site location: outside the recovery window, and no kept base backup needs it.")
    OFFSITE_LIST_REBUILT = ("offsite.list_rebuilt", "The catalog of a system's off-site packages was rebuilt from the "
                            "encrypted package list in its off-site location (a panel that lost its database).")


_EXTRA: dict[str, str] = {}


def register_action(action: str, description: str) -> None:
    """Declare an action written by a test suite or a plugin; the panel's own are ``AuditAction`` members."""
    if action in AuditAction._value2member_map_:
        raise ValueError(f"{action!r} is already an AuditAction")
    _EXTRA[str(action)] = description


def check_action(action) -> str:
    """The action's value if it is declared, else ``UnknownAuditAction`` naming it."""
    value = str(action)
    if value in AuditAction._value2member_map_ or value in _EXTRA:
        return value
    raise UnknownAuditAction(f"unknown audit action {value!r}: declare it in compliance/audit/actions.py")


def action_choices() -> list[tuple[str, str]]:
    """``(value, description)`` of every action the panel writes, sorted by value (the filter and the docs)."""
    return sorted((member.value, member.description) for member in AuditAction)


DOC_PATH = "docs/audit-actions.md"


def actions_markdown() -> str:
    """The text of ``docs/audit-actions.md``: every action, grouped by the noun before its dot."""
    lines = [
        "# Audit actions",
        "",
        "Every action the panel writes to the audit log. Generated from `compliance/audit/actions.py` by",
        "`python manage.py audit_actions_doc`; do not edit by hand (a test checks that it is up to date).",
        "Filter the log by one of them, or by a prefix such as `restore.*`.",
        "",
        "| action | written when |",
        "| --- | --- |",
    ]
    lines += [f"| `{value}` | {description} |" for value, description in action_choices()]
    return "\n".join(lines) + "\n"
