"""Fixtures of the health tests: a catalog built at panel-clock times (rows only, no dumps).

``catalog`` gives a system added 60 days ago with a primary and an off-site location;
``artifact(kind, age, ...)`` adds an artifact of that age with its copies and verification;
``healthy`` adds what makes the system score 100. Import with
``pytest_plugins = ["tests.compliance_fixtures", "tests.health_fixtures"]``.
"""

import uuid
from datetime import timedelta

import pytest

from backups.models import Artifact, ArtifactCopy, StorageLocation, System
from drpanel import clock

SHA = "ab" * 32


class Catalog:
    """A system and its locations; ``artifact()`` adds backups at ages measured on the panel clock."""

    def __init__(self, tmp_path):
        now = clock.now()
        self.primary = StorageLocation.objects.create(name="primary", kind="local", role="primary",
                                                      path=str(tmp_path / "primary"))
        self.offsite = StorageLocation.objects.create(name="offsite", kind="local", role="offsite",
                                                      path=str(tmp_path / "offsite"))
        self.system = System.objects.create(name="chatbotdysa", database_ref="env:DRPANEL_SECRET_TEST_SOURCE_URL",
                                            config_paths=["/etc/chatbotdysa"], created_at=now - timedelta(days=60))

    def artifact(self, kind="full", age=timedelta(hours=2), *, status="available", offsite="ok",
                 verified=None, verified_age=timedelta(hours=1), system=None) -> Artifact:
        """An artifact ``age`` old; ``offsite`` is the off-site copy's status (None: no copy);
        ``verified`` a verification level reached ``verified_age`` ago (None: never verified)."""
        now = clock.now()
        artifact_id = uuid.uuid4()
        artifact = Artifact.objects.create(
            id=artifact_id, system=system or self.system, kind=kind, status=status,
            format="config_tar" if kind == "config" else "pg_custom", created_at=now - age, size=4096 + len(kind),
            sha256=SHA, storage_key=f"{kind}/{artifact_id}", last_verified_level=verified or "",
            last_verified_at=now - verified_age if verified else None)
        ArtifactCopy.objects.create(artifact=artifact, location=self.primary, key=artifact.storage_key,
                                    status="ok", size=artifact.size, sha256_seen=SHA, checked_at=now - age)
        if offsite is not None:
            ArtifactCopy.objects.create(artifact=artifact, location=self.offsite, key=artifact.storage_key,
                                        status=offsite, size=artifact.size,
                                        sha256_seen=SHA if offsite == "ok" else "cd" * 32, checked_at=now - age)
        return artifact


@pytest.fixture
def catalog(db, panel_clock, tmp_path):
    return Catalog(tmp_path)


@pytest.fixture
def healthy(catalog):
    """A full 2 h old (copied off-site, verified at decrypt level 1 h ago) and a config backup 1 h old."""
    full = catalog.artifact("full", timedelta(hours=2), verified="decrypt", verified_age=timedelta(hours=1))
    config = catalog.artifact("config", timedelta(hours=1))
    return {"full": full, "config": config}
