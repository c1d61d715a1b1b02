"""Jobs of the audit log (scheduled in ``drpanel/cron.py``)."""

from compliance.audit.checkpoints import checkpoint_write


def audit_checkpoint_job() -> str:
    """Hourly: sign the chain head and store it outside the database."""
    _, message = checkpoint_write()
    return message
