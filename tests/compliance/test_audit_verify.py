"""Verification finds and names every tamper class; checkpoints catch a consistent rewrite; keys rotate."""

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.management import call_command
from django.db import connection
from rq.cron import CronScheduler

from compliance.audit import GENESIS_HASH, compute_hash, event_fields
from compliance.audit.checkpoints import checkpoint_write
from compliance.audit.jobs import audit_checkpoint_job
from compliance.audit.signing import SigningKeyError, fingerprint, known_public_keys, private_pem, signing_key_rotate
from compliance.audit.verify import (
    CHECKPOINT_MISMATCH,
    HASH_MISMATCH,
    MISSING_SEQ,
    PREV_HASH_MISMATCH,
    audit_verify,
    verify_chain,
)
from compliance.models import AuditEvent
from tests.audit_support import record, tamper

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def audit_dirs(settings, tmp_path):
    settings.AUDIT_CHECKPOINT_DIR = tmp_path / "checkpoints"
    settings.AUDIT_RETIRED_KEYS_DIR = tmp_path / "retired"
    settings.AUDIT_SIGNING_KEY_DEV_PATH = tmp_path / "signing-key.pem"
    return tmp_path


@pytest.fixture
def events():
    return record(10)


def test_an_intact_chain_verifies_with_its_count_and_head(events):
    result = verify_chain()
    head = events[-1].seq
    assert result.ok
    assert result.count == head and result.head_seq == head and result.head_hash == events[-1].hash
    assert result.summary().startswith(f"OK: {head} events, seq 1–{head}, head hash {events[-1].hash}")


def test_an_empty_log_verifies():
    tamper("DELETE FROM {table}")
    result = verify_chain()
    assert result.ok and result.count == 0 and result.head_hash is None


def test_one_edited_byte_is_a_hash_mismatch_at_its_seq(events):
    edited = events[3].seq
    tamper("UPDATE {table} SET action = 'test.evenT' WHERE seq = %s", [edited])
    result = verify_chain()
    assert (result.ok, result.broken_seq, result.reason) == (False, edited, HASH_MISMATCH)
    assert result.count == edited - 1


def test_an_edited_detail_is_a_hash_mismatch_at_its_seq(events):
    tamper("""UPDATE {table} SET details = '{"n": 7}'::jsonb WHERE seq = %s""", [events[5].seq])
    result = verify_chain()
    assert (result.broken_seq, result.reason) == (events[5].seq, HASH_MISMATCH)


def test_an_edit_with_its_hash_recomputed_breaks_the_next_link(events):
    event = AuditEvent.objects.get(seq=events[4].seq)
    event.actor_username = "mallory"
    forged = compute_hash(event_fields(event))
    tamper("UPDATE {table} SET actor_username = 'mallory', hash = %s WHERE seq = %s", [forged, event.seq])
    result = verify_chain()
    assert (result.broken_seq, result.reason) == (event.seq + 1, PREV_HASH_MISMATCH)
    assert f"seq {event.seq} was altered" in result.detail


def test_a_deleted_event_is_a_missing_seq(events):
    deleted = events[6].seq
    tamper("DELETE FROM {table} WHERE seq = %s", [deleted])
    result = verify_chain()
    assert (result.broken_seq, result.reason) == (deleted, MISSING_SEQ)
    assert f"seq {deleted} is missing" in result.detail


def test_a_deleted_first_event_is_a_missing_seq(events):
    tamper("DELETE FROM {table} WHERE seq = 1")
    result = verify_chain()
    assert (result.broken_seq, result.reason) == (1, MISSING_SEQ)


def test_two_swapped_events_are_a_hash_mismatch_at_the_first(events):
    a, b = events[2].seq, events[3].seq
    tamper("UPDATE {table} SET seq = 1000000 WHERE seq = %s;"
           "UPDATE {table} SET seq = %s WHERE seq = %s;"
           "UPDATE {table} SET seq = %s WHERE seq = 1000000", [a, a, b, b])
    result = verify_chain()
    assert (result.broken_seq, result.reason) == (a, HASH_MISMATCH)


def test_truncated_newest_events_are_missing_seqs_past_the_last_checkpoint(events):
    checkpoint_write()
    kept = events[6].seq
    tamper("DELETE FROM {table} WHERE seq > %s", [kept])
    result = verify_chain()
    assert (result.broken_seq, result.reason) == (kept + 1, MISSING_SEQ)
    assert f"the chain ends at seq {kept} " in result.detail and f"pins seq {events[-1].seq}" in result.detail


def test_without_a_checkpoint_a_truncation_cannot_be_seen(events):
    tamper("DELETE FROM {table} WHERE seq > %s", [events[6].seq])
    assert verify_chain().ok


def _rewrite_from(seq: int) -> None:
    """Change one event and recompute every hash after it, as an attacker with full access would."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT id, seq FROM compliance_auditevent WHERE seq >= %s ORDER BY seq", [seq])
        rows = cursor.fetchall()
    prev_hash = AuditEvent.objects.get(seq=seq - 1).hash if seq > 1 else GENESIS_HASH
    tamper("UPDATE {table} SET action = 'test.rewritten' WHERE seq = %s", [seq])
    for pk, _ in rows:
        event = AuditEvent.objects.get(pk=pk)
        event.prev_hash = prev_hash
        new_hash = compute_hash(event_fields(event))
        tamper("UPDATE {table} SET prev_hash = %s, hash = %s WHERE id = %s", [prev_hash, new_hash, pk])
        prev_hash = new_hash


def test_a_consistent_rewrite_of_the_whole_table_is_caught_by_the_first_checkpoint(events):
    checkpoint_write()
    _rewrite_from(1)
    result = verify_chain()
    assert (result.ok, result.broken_seq, result.reason) == (False, events[-1].seq, CHECKPOINT_MISMATCH)
    assert "no earlier checkpoint matches" in result.detail


def test_a_consistent_rewrite_passes_the_chain_but_not_the_checkpoints(events):
    checkpoint_write()  # pins the 10th event
    more = record(5)
    checkpoint_write()  # pins the 15th
    _rewrite_from(more[1].seq)
    result = verify_chain()
    assert (result.ok, result.broken_seq, result.reason) == (False, more[-1].seq, CHECKPOINT_MISMATCH)
    assert f"after seq {events[-1].seq}, the last checkpoint that matches" in result.detail


def test_a_consistent_rewrite_without_checkpoints_goes_unseen(events):
    _rewrite_from(events[3].seq)
    assert verify_chain().ok


def test_a_checkpoint_signed_by_another_key_is_not_trusted(events, audit_dirs):
    checkpoint_write()
    path = next((audit_dirs / "checkpoints").glob("checkpoint-*.json"))
    document = json.loads(path.read_text())
    document["hash"] = "0" * 64
    path.write_text(json.dumps(document))
    result = verify_chain()
    assert (result.broken_seq, result.reason) == (events[-1].seq, CHECKPOINT_MISMATCH)
    assert "signature does not verify" in result.detail


def test_an_unreadable_checkpoint_is_reported(events, audit_dirs):
    checkpoint_write()
    path = next((audit_dirs / "checkpoints").glob("checkpoint-*.json"))
    path.write_text("{not json")
    result = verify_chain()
    assert result.reason == CHECKPOINT_MISMATCH and "not a readable checkpoint" in result.detail


def test_checkpoints_are_skipped_while_the_head_does_not_move(events, audit_dirs):
    first, _ = checkpoint_write()
    second, message = checkpoint_write()
    assert first["seq"] == events[-1].seq and second is None and "already checkpointed" in message
    record(1)
    assert f"seq {events[-1].seq + 1}" in audit_checkpoint_job()
    assert len(list((audit_dirs / "checkpoints").glob("checkpoint-*.json"))) == 2


def test_the_checkpoint_job_runs_every_hour(redis_conn):
    scheduler = CronScheduler(connection=redis_conn)
    scheduler.load_config_from_file("drpanel.cron")
    jobs = {job.func: job for job in scheduler.get_jobs()}
    assert jobs[audit_checkpoint_job].cron == "0 * * * *"


def test_a_rotated_key_keeps_old_checkpoints_verifiable(events, audit_dirs):
    checkpoint_write()
    old_fingerprint, new_fingerprint = signing_key_rotate(actor=None)
    assert old_fingerprint != new_fingerprint
    assert (audit_dirs / "retired" / f"{old_fingerprint}.pem").exists()
    checkpoint_write()
    assert set(known_public_keys()) == {old_fingerprint, new_fingerprint}
    assert verify_chain().ok
    assert AuditEvent.objects.filter(action="audit.key_rotated", details__retired_key=old_fingerprint).exists()
    # Without the retired public key, the old checkpoint is signed by an unknown key.
    (audit_dirs / "retired" / f"{old_fingerprint}.pem").unlink()
    result = verify_chain()
    assert result.reason == CHECKPOINT_MISMATCH and "unknown key" in result.detail


def test_a_key_from_the_environment_is_not_rotated_by_the_panel(settings):
    key = Ed25519PrivateKey.generate()
    settings.AUDIT_SIGNING_KEY = private_pem(key)
    assert fingerprint(key.public_key()) in known_public_keys()
    with pytest.raises(SigningKeyError, match="rotate it there"):
        signing_key_rotate(actor=None)


def test_verification_is_recorded_with_its_result(auditor, events):
    result = audit_verify(actor=auditor)
    event = AuditEvent.objects.get(action="audit.verified")
    assert result.ok and event.outcome == "success" and event.actor == auditor
    assert event.details["count"] == events[-1].seq and event.details["head_hash"] == events[-1].hash
    tamper("DELETE FROM {table} WHERE seq = %s", [events[1].seq])
    assert not audit_verify(actor=auditor).ok
    failed = AuditEvent.objects.filter(action="audit.verified").order_by("-seq").first()
    assert failed.outcome == "failure" and failed.details["broken_seq"] == events[1].seq


def test_the_command_prints_one_line_and_exits_1_when_broken(events, capsys):
    call_command("audit_verify")
    assert capsys.readouterr().out.startswith(f"OK: {events[-1].seq} events")
    tamper("UPDATE {table} SET outcome = 'failure' WHERE seq = %s", [events[8].seq])
    with pytest.raises(SystemExit) as exit_info:
        call_command("audit_verify")
    assert exit_info.value.code == 1
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"BROKEN at seq {events[8].seq}: hash mismatch") and "\n" not in out


def test_the_checkpoint_command_writes_one_on_demand(events, capsys, audit_dirs):
    call_command("audit_checkpoint")
    assert f"Checkpoint of seq {events[-1].seq} " in capsys.readouterr().out
    call_command("audit_checkpoint")
    assert "already checkpointed" in capsys.readouterr().out
    call_command("audit_checkpoint", "--force")
    assert len(list((audit_dirs / "checkpoints").glob("checkpoint-*.json"))) == 2


# --- several processes ----------------------------------------------------------------------

def _bounds(processes: int) -> list[int]:
    head = AuditEvent.objects.order_by("-seq").first().seq
    return [head * n // processes for n in range(processes + 1)]


def _first_of_second_range():
    return _bounds(3)[1] + 1


def _edit_and_rehash(seq: int) -> None:
    event = AuditEvent.objects.get(seq=seq)
    event.actor_username = "mallory"
    tamper("UPDATE {table} SET actor_username = 'mallory', hash = %s WHERE seq = %s",
           [compute_hash(event_fields(event)), seq])


PARALLEL_TAMPERS = {
    "nothing": lambda: None,
    "an edit inside a range": lambda: tamper("UPDATE {table} SET action = 'x' WHERE seq = %s",
                                             [_first_of_second_range() + 7]),
    "the first event of a range deleted": lambda: tamper("DELETE FROM {table} WHERE seq = %s",
                                                         [_first_of_second_range()]),
    "the last events of a range deleted": lambda: tamper("DELETE FROM {table} WHERE seq > %s AND seq < %s",
                                                         [_first_of_second_range() - 4, _first_of_second_range()]),
    "a whole range deleted": lambda: tamper("DELETE FROM {table} WHERE seq > %s AND seq <= %s", _bounds(3)[1:3]),
    "the event before a range rewritten": lambda: _edit_and_rehash(_first_of_second_range() - 1),
    "the first event of a range edited": lambda: tamper("UPDATE {table} SET outcome = 'denied' WHERE seq = %s",
                                                        [_first_of_second_range()]),
    "the newest events truncated": lambda: tamper("DELETE FROM {table} WHERE seq > %s", [_bounds(3)[3] - 5]),
}


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("tampering", list(PARALLEL_TAMPERS))
def test_several_processes_find_exactly_what_one_finds(tampering):
    record(240)
    checkpoint_write()
    PARALLEL_TAMPERS[tampering]()
    alone, together = verify_chain(processes=1), verify_chain(processes=3)
    assert together.processes == 3
    assert (together.ok, together.count, together.head_hash, together.broken_seq, together.reason,
            together.detail) == (alone.ok, alone.count, alone.head_hash, alone.broken_seq, alone.reason, alone.detail)
    assert alone.ok == (tampering == "nothing")
