"""The channel a recovered data directory goes through between two hosts' workers: real Redis, real files."""

import os
import threading

import pytest

from restores import shipping


@pytest.fixture
def directory(tmp_path):
    """A directory like a small data directory: nested folders, a 0600 file bigger than two chunks."""
    root = tmp_path / "sent"
    (root / "base" / "1").mkdir(parents=True)
    (root / "PG_VERSION").write_text("15\n")
    big = root / "base" / "1" / "1259"
    big.write_bytes(os.urandom(2 * shipping.CHUNK_BYTES + 12345))
    big.chmod(0o600)
    return root


def sent_whole(redis_conn, directory, key) -> shipping.Shipped:
    return shipping.send(redis_conn, key, directory, summary={"replay_position": "0/3000060"})


def test_a_directory_arrives_whole_with_its_modes_and_the_senders_summary(redis_conn, directory, tmp_path):
    key = shipping.channel("run-1")
    into = tmp_path / "into"
    into.mkdir()
    box = {}
    sender = threading.Thread(target=lambda: box.update(sent=sent_whole(redis_conn, directory, key)))
    sender.start()
    seen = []

    got = shipping.receive(redis_conn, key, into, work=tmp_path, on_progress=seen.append)

    sender.join()
    assert got.sha256 == box["sent"].sha256 and got.bytes == box["sent"].bytes
    assert got.chunks == box["sent"].chunks >= 3 and len(seen) == got.chunks
    assert got.summary == {"replay_position": "0/3000060"}
    big = into / "base" / "1" / "1259"
    assert big.read_bytes() == (directory / "base" / "1" / "1259").read_bytes()
    assert big.stat().st_mode & 0o777 == 0o600
    assert not redis_conn.exists(key) and not list(tmp_path.glob("*.tar"))


@pytest.mark.parametrize(("spoil", "reason"), [
    ("flip", "checksum mismatch in chunk 1"),
    ("drop", "chunk 1 is missing (chunk 2 came next)"),
    ("drop-last", "1 chunks are missing"),
    ("fail", "the sender failed: barman recover failed"),
])
def test_a_spoiled_shipment_is_refused_and_nothing_is_extracted(redis_conn, directory, tmp_path, spoil, reason):
    key = shipping.channel("run-2")
    sent_whole(redis_conn, directory, key)
    messages = redis_conn.lrange(key, 0, -1)
    if spoil == "flip":
        header, _, data = messages[1].partition(b"\n")
        redis_conn.lset(key, 1, header + b"\n" + bytes([data[0] ^ 1]) + data[1:])
    elif spoil == "drop":
        redis_conn.lrem(key, 1, messages[1])
    elif spoil == "drop-last":
        redis_conn.lrem(key, 1, messages[-2])
    else:
        redis_conn.delete(key)
        shipping.send_failure(redis_conn, key, "barman recover failed")
    into = tmp_path / "into"
    into.mkdir()

    with pytest.raises(shipping.ShipRefused, match=reason.replace("(", r"\(").replace(")", r"\)")):
        shipping.receive(redis_conn, key, into, work=tmp_path)

    assert not list(into.iterdir()) and not list(tmp_path.glob("*.tar"))


def test_a_silent_sender_is_refused_after_the_idle_time(redis_conn, tmp_path):
    into = tmp_path / "into"
    into.mkdir()
    with pytest.raises(shipping.ShipRefused, match="chunk 0 did not arrive in 1 s"):
        shipping.receive(redis_conn, shipping.channel("run-3"), into, work=tmp_path, idle_seconds=1)
