"""Restore models (targets, verification runs, restore runs, approvals) arrive with the restore issue."""
