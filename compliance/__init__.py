"""Compliance: the audit log, checklists, certifications, the contact roster and the health score."""
