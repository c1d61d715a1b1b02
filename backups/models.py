"""Backup catalog models (systems, storage locations, artifacts, copies) arrive with the catalog issue."""
