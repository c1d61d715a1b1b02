"""Backups: systems, storage locations, artifacts and manifests, the artifact format, backup jobs."""
