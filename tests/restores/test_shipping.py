"""The channel a recovered data directory goes through between two hosts' workers: real Redis, real files."""

import logging
import os
import threading

import pytest

from restores import shipping
from restores.pitr import ReplayProgress
from tests.support import wait_for


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


def replay(replayed: str, fraction: float, *, in_recovery: bool = True) -> ReplayProgress:
    return ReplayProgress(replayed=replayed, start="0/2000028", end="0/6C000000", fraction=fraction,
                          in_recovery=in_recovery)


def received(redis_conn, key, tmp_path) -> tuple[shipping.Shipped, list, list]:
    into = tmp_path / "into"
    into.mkdir()
    replays, alive = [], []
    got = shipping.receive(redis_conn, key, into, work=tmp_path, on_replay=replays.append, on_alive=alive.append)
    return got, replays, alive


def test_the_senders_wal_replay_reaches_the_receiver_at_once_and_its_end_always(redis_conn, directory, tmp_path):
    key = shipping.channel("run-4")
    moving, too_soon = replay("0/3000000", 0.25), replay("0/3800000", 0.375)
    ended = replay("0/5A000000", 1.0, in_recovery=False)
    with shipping._saying_alive(redis_conn, key, "recovering shop to latest on barman-host") as on_replay:
        for progress in (moving, too_soon, ended):
            on_replay(progress)
    sent_whole(redis_conn, directory, key)

    got, replays, alive = received(redis_conn, key, tmp_path)

    # Said within REPLAY_SAY_SECONDS of the previous one, the middle position waits for the next alive; the end of
    # the replay is never held back.
    assert replays == [moving, ended] and alive == []
    assert got.summary == {"replay_position": "0/3000060"}


def test_each_alive_repeats_the_latest_replay_position(redis_conn, directory, tmp_path, monkeypatch):
    monkeypatch.setattr(shipping, "ALIVE_SECONDS", 0.2)
    key = shipping.channel("run-5")
    moving = replay("0/3000000", 0.25)
    with shipping._saying_alive(redis_conn, key, "recovering shop to latest on barman-host") as on_replay:
        on_replay(moving)
        wait_for(lambda: redis_conn.llen(key) >= 3, 10, what="three alive lines")
    sent_whole(redis_conn, directory, key)

    _, replays, alive = received(redis_conn, key, tmp_path)

    assert len(replays) >= 3 and set(replays) == {moving} and alive == []


def test_a_bare_alive_from_a_sender_of_before_still_says_what_it_does(redis_conn, directory, tmp_path):
    key = shipping.channel("run-6")
    redis_conn.rpush(key, b"alive\nrecovering shop to latest on barman-host")
    redis_conn.rpush(key, shipping.alive_message("recovering shop to latest on barman-host"))
    sent_whole(redis_conn, directory, key)

    got, replays, alive = received(redis_conn, key, tmp_path)

    assert alive == ["recovering shop to latest on barman-host"] * 2 and replays == []
    assert (tmp_path / "into" / "PG_VERSION").read_text() == "15\n" and got.chunks >= 3


def test_a_receiver_without_on_replay_hears_a_replaying_sender_as_alive(redis_conn, directory, tmp_path):
    key = shipping.channel("run-7")
    redis_conn.rpush(key, shipping.alive_message("recovering shop", replay("0/3000000", 0.25)))
    sent_whole(redis_conn, directory, key)
    into = tmp_path / "into"
    into.mkdir()
    alive = []

    shipping.receive(redis_conn, key, into, work=tmp_path, on_alive=alive.append)

    assert alive == ["recovering shop"]


@pytest.mark.parametrize("said", [
    b"{not json",
    b'{"replayed": "0/3000000"}',
    b'{"replayed": "nowhere", "start": "0/2000028", "end": "0/6C000000", "fraction": 0.25, "in_recovery": true}',
    b'{"replayed": "0/3000000", "start": "0/2000028", "end": "0/6C000000", "fraction": 7, "in_recovery": true}',
    b'{"replayed": "0/3000000", "start": "0/2000028", "end": "0/6C000000", "fraction": 0.2, "in_recovery": "no"}',
    b"[1, 2]",
])
def test_a_replay_position_that_cannot_be_read_is_logged_and_the_shipment_goes_on(
        redis_conn, directory, tmp_path, caplog, said):
    key = shipping.channel("run-8")
    redis_conn.rpush(key, b"alive " + said + b"\nrecovering shop")
    sent_whole(redis_conn, directory, key)

    with caplog.at_level(logging.WARNING, logger="restores.shipping"):
        got, replays, alive = received(redis_conn, key, tmp_path)

    assert replays == [] and alive == ["recovering shop"] and got.chunks >= 3
    assert "a replay position the sender said cannot be read" in caplog.text
