"""Schemathesis over the panel's own OpenAPI schema, with each role's bearer token.

The schema is read from ``/api/v1/schema/`` of the real WSGI application, so every endpoint
there — including those added later — is fuzzed without touching this file. For each
operation schemathesis sends the schema's examples, boundary values and generated requests,
valid and invalid ones (a deterministic seed, a few dozen per operation), and checks each
answer: no 500, the status code documented, the content type and body as documented, the
headers as documented, invalid input refused with a 4xx, an undeclared method answered 405,
no answer without credentials.

Every request is sent once with each role's token (operator, manager, auditor, admin), one role
after the other. The cases are generated once per operation: with a fixed seed they were the same
for every role when each role was an item of its own, which generated them four times (about a
third of the fuzz's time). After a 2xx, ``ignored_auth`` sends the request again without a token and with a
made-up one; those two probes do not depend on the role, so they are sent once a case, after the first role let in.

``positive_data_acceptance`` is off: some refusals depend on more than one value (``from``
after ``to``, a config backup of a system without config paths) or on the data, which a
schema cannot say; those answers are documented 400s and still checked as such.

About half of the generated requests for an operation with an ``{id}`` use the id of a real
object (matched by the path's first segment), so the 200 answers are checked too, not only
the 404s.
"""

import zlib

import pytest
import schemathesis
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import ignored_auth

from backups.models import Artifact, ArtifactCopy, BackupRun, StorageLocation, System
from compliance.certification_record import certification_assemble, content_hash
from compliance.checklists import checklist_period_open
from compliance.models import Alert, Certification, Contact
from drpanel import clock
from drpanel.services import api_token_create
from restores.models import RestoreRun, Target, VerificationRun
from tests.factories import PASSWORD, UserFactory

EXAMPLES_PER_OPERATION = 25
CONFIG = SchemathesisConfig.from_dict({
    "seed": 20261125,
    "suppress-health-check": ["too_slow", "filter_too_much", "data_too_large"],
    "generation": {"mode": "all", "max-examples": EXAMPLES_PER_OPERATION, "deterministic": True,
                   "database": "none"},  # no replay of examples saved by earlier runs: every run is the same
    "phases": {"stateful": {"enabled": False}},
    "checks": {"positive_data_acceptance": {"enabled": False}},
})
# The WSGI application as drpanel/wsgi.py builds it, without its start-up claim of the installation's queues
# (that claim is a process start, tested in tests/drpanel/test_queues_isolation.py).
application = get_wsgi_application()
schema = schemathesis.openapi.from_wsgi("/api/v1/schema/", application, config=CONFIG)

ROLES = ("operator", "manager", "auditor", "admin")
pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _one_connection_for_the_test():
    """Requests go straight to the WSGI handler (as the test client does, minus its shortcuts): the
    test's transaction must survive the end of each request."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.fixture
def tokens(request, roles):
    """A bearer token of each role's persona (made through the real service, password confirmed), by role."""
    made = {}
    for role in roles:
        user = request.getfixturevalue(role)
        made[role] = api_token_create(actor=user, user=user, name="schemathesis", password=PASSWORD)[1]
    return made


@pytest.fixture
def known_ids(tmp_path):
    """One real object per collection, keyed by the path's first segment under /api/v1/."""
    system = System.objects.create(name="chatbotdysa", database_ref="env:DRPANEL_FUZZ_UNSET",
                                   config_paths=[str(tmp_path)])
    location = StorageLocation.objects.create(name="primary", kind="local", role="primary", path=str(tmp_path))
    artifact = Artifact.objects.create(system=system, kind="full", format="pg_custom", status="available",
                                       size=1234, sha256="a" * 64, storage_key="drpanel/system-1/x.drp",
                                       manifest={"artifact_id": "x"})
    ArtifactCopy.objects.create(artifact=artifact, location=location, key=artifact.storage_key, status="ok",
                                size=1234, sha256_seen="a" * 64)
    run = BackupRun.objects.create(system=system, kind="full", artifact=artifact, state="succeeded", percent=100)
    target = Target.objects.create(name="staging", environment="staging", database_ref="env:DRPANEL_FUZZ_UNSET",
                                   config_dir=str(tmp_path / "config"))
    alert = Alert.objects.create(kind="backup.stale", severity="warning", subject="No full backup for 30 h", message="",
                         dedup_key="fuzz")
    contact = Contact.objects.create(level="l1", name="On call", email="oncall@example.com", response_minutes=15)
    verification = VerificationRun.objects.create(artifact=artifact, level="decrypt", state="succeeded",
                                                  reached_level="decrypt", percent=100)
    restore = RestoreRun.objects.create(artifact=artifact, target=target, mode="database-only", state="succeeded",
                                        requested_by=UserFactory(username="fuzz-requester", role="Operator"))
    today = clock.today()
    record = certification_assemble(year=today.year, month=today.month)
    certification = Certification.objects.create(
        year=today.year, month=today.month, state="signed", scope=record["scope"], record=record,
        content_hash=content_hash(record), attestation="Fuzzed.", signed_by=UserFactory(username="fuzz-signer",
                                                                                        role="Manager"))
    weekly = checklist_period_open("weekly")
    item = weekly.items.filter(kind="manual", requires_evidence=False).first()
    spare, _ = api_token_create(actor=None, user=UserFactory(username="fuzz-token-owner"), name="spare")
    return {"systems": system.pk, "artifacts": artifact.pk, "backup-runs": run.pk, "targets": target.pk,
            "verifications": verification.pk, "restores": restore.pk, "alerts": alert.pk, "contacts": contact.pk,
            "checklists": item.pk, "tokens": spare.pk, "certifications": certification.label}


def use_known_id(case, known_ids) -> None:
    """Point about half of the requests at a real object (deterministically, from the generated value)."""
    segment = case.operation.path.removeprefix("/api/v1/").split("/")[0]
    if "id" not in (case.path_parameters or {}) or segment not in known_ids:
        return
    if case.meta is not None and case.meta.is_negative_at(ParameterLocation.PATH):
        return  # a deliberately malformed id stays malformed
    if zlib.crc32(repr(case.path_parameters["id"]).encode()) % 2:
        case.path_parameters = {**case.path_parameters, "id": str(known_ids[segment])}


@pytest.mark.slow  # about 50 requests per operation, each sent with four tokens: the largest part of the suite
# A parametrization of its own: without one, schemathesis 4.32 on pytest 9 gives every operation's item the same node
# id (no "[GET /api/v1/…]"), and xdist then ran one operation of the 65 (tests/conftest.py now refuses such a run).
@pytest.mark.parametrize("roles", [ROLES], ids=["every-role"])
@schema.parametrize()
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_every_answer_conforms_to_the_schema(case, roles, tokens, known_ids):
    use_known_id(case, known_ids)
    skipped = []
    for role in roles:
        try:
            response = case.call_and_validate(headers={"Authorization": f"Bearer {tokens[role]}"},
                                              excluded_checks=skipped)
        except Exception as exc:
            exc.add_note(f"with the {role}'s token")
            raise
        # ``ignored_auth`` answers a 2xx by sending the case again without a token and with a made-up one: the same
        # two requests whichever role's token it replaced, so they go once a case, not once for each role let in.
        if 200 <= response.status_code < 300:
            skipped = [ignored_auth]


def test_the_schema_documents_every_refusal():
    """Each operation names its operation id and the error answers its shape implies."""
    raw = schema.raw_schema
    assert raw["paths"], "the schema lists no operation"
    for path, operations in raw["paths"].items():
        for method, operation in operations.items():
            where = f"{method.upper()} {path}"
            assert operation.get("operationId"), f"{where} has no operation id"
            codes = set(operation["responses"])
            assert {"401", "403"} <= codes or method == "get" and path.endswith(("/me", "/tokens")), where
            if "{" in path:
                assert "404" in codes, f"{where} does not document 404"
            for code in codes - {"200", "201", "202", "204"}:
                body = operation["responses"][code]["content"]["application/json"]["schema"]
                assert body == {"$ref": "#/components/schemas/Error"}, f"{where} {code} has another error body"
