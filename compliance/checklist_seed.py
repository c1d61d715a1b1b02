"""The first version of the checklist templates: the old guide's "BACKUP VERIFICATION CHECKLIST".

Used once by the data migration (and to bring the templates back after a test flush).
After that the templates live in the database and change only through the template
editor, so editing this file changes nothing in a running panel.
Each item: (code, title, kind, description, requires_evidence, evidence_hint).
"""

DEFAULT_TEMPLATES = {
    "daily": [
        ("daily.full_backup", "Full backup completed successfully", "automatic",
         "A full backup of every system finished today, with its checksum recorded.", False, ""),
        ("daily.incremental_backup", "Incremental backup every 6 hours", "automatic",
         "Incremental backups ran at least every 6 hours for the systems whose policy enables them.", False, ""),
        ("daily.config_backup", "Config backup every 4 hours", "automatic",
         "Configuration backups ran at least every 4 hours.", False, ""),
        ("daily.health_score", "Health score = 100%", "automatic",
         "Every system's health score stayed at 100 today.", False, ""),
        ("daily.offsite_copy", "Cloud sync verified", "automatic",
         "The newest full backup has an off-site copy whose checksum matches.", False, ""),
        ("daily.encryption_integrity", "Encryption integrity confirmed", "automatic",
         "The newest full backup was verified at decrypt level or better.", False, ""),
    ],
    "weekly": [
        ("weekly.staging_restore", "Test database restore on staging", "manual",
         "Restore a recent full backup into a staging target (or run a restore-test) and link it.", True,
         "a successful staging restore or restore-test of this week"),
        ("weekly.file_access", "Verify backup file accessibility", "manual",
         "Open the storage locations and confirm the newest artifacts can be read.", False, ""),
        ("weekly.encryption_roundtrip", "Confirm encryption/decryption process", "manual",
         "Encrypt and decrypt a test artifact with the current master key.", False, ""),
        ("weekly.cross_platform", "Test cross-platform compatibility", "manual",
         "Restore onto a different host or PostgreSQL minor version than production runs.", False, ""),
        ("weekly.runbook", "Validate disaster recovery runbook", "manual",
         "Walk through the recovery runbook and note anything out of date.", False, ""),
    ],
    "monthly": [
        ("monthly.drill", "Complete disaster recovery drill", "signoff",
         "A timed restore drill into staging, with its measured RTO.", False, ""),
        ("monthly.rto_rpo", "Document RTO/RPO measurements", "signoff",
         "The month's measured RTO and RPO against their targets.", False, ""),
        ("monthly.contacts", "Update emergency contact lists", "signoff",
         "Every contact of the roster verified in the last 30 days.", False, ""),
        ("monthly.procedures", "Review and update procedures", "signoff",
         "The procedures were reviewed this month.", False, ""),
        ("monthly.audit_trail", "Compliance audit trail", "signoff",
         "The audit log verifies, and its head is recorded in the certification.", False, ""),
    ],
}


def seed_templates(template_model, item_model) -> None:
    """Create each cadence's template with its items when it does not exist (idempotent)."""
    for cadence, items in DEFAULT_TEMPLATES.items():
        template, created = template_model.objects.get_or_create(cadence=cadence)
        if not created:
            continue
        for position, (code, title, kind, description, requires_evidence, hint) in enumerate(items, start=1):
            item_model.objects.get_or_create(code=code, defaults={
                "template": template, "title": title, "kind": kind, "description": description,
                "position": position, "requires_evidence": requires_evidence, "evidence_hint": hint,
            })
