"""Restores: targets, verification runs, restore runs, approvals, rollback, drills."""
