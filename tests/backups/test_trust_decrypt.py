"""The emergency decrypt script (``backups/decrypt_artifact.py``) streams: a 200 MB artifact decrypts in a
child process whose peak memory stays a small fraction of the artifact, and the output is the plaintext."""

import base64
import hashlib
import io
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from backups import formats
from backups.keys import Keyring

pytestmark = pytest.mark.slow

SIZE_MB = 200
MEASURE = """
import resource, subprocess, sys
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
sys.stderr.write(done.stderr)
print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, done.stdout.strip(), sep="\\n")
"""


def run_measured(script: Path, source: Path, target: Path, key: bytes) -> tuple[int, int, str]:
    """Run the script as the only child of a fresh interpreter: its peak RSS (KiB) is that child's alone."""
    env = {"PATH": os.environ["PATH"], "DRPANEL_KEY": base64.b64encode(key).decode()}
    done = subprocess.run([sys.executable, "-c", MEASURE, sys.executable, "-I", str(script), str(source),
                           str(target)], env=env, capture_output=True, text=True, timeout=600)
    returncode, peak_kib, stdout = done.stdout.split("\n", 2)
    return int(returncode), int(peak_kib), stdout + done.stderr


def test_the_decrypt_script_streams_a_large_artifact_in_constant_memory(tmp_path):
    key = os.urandom(32)
    keyring = Keyring.from_keys({"k1": key}, active="k1")
    plain, artifact, out = tmp_path / "plain", tmp_path / "a.drp", tmp_path / "out"
    block = os.urandom(1 << 20)
    digest = hashlib.sha256()
    with open(plain, "wb") as f:
        for i in range(SIZE_MB):
            piece = i.to_bytes(8, "big") + block[8:]  # every megabyte differs, so a dropped one would show
            digest.update(piece)
            f.write(piece)
    with open(plain, "rb") as src, open(artifact, "wb") as dst:
        formats.encrypt_stream(src, dst, artifact_id=uuid.uuid4(), keyring=keyring, chunk_size=1 << 20)
    plain.unlink()
    script = Path(formats.__file__).parent / "decrypt_artifact.py"

    returncode, peak_kib, output = run_measured(script, artifact, out, key)

    assert returncode == 0, output
    assert digest.hexdigest() in output
    with open(out, "rb") as f:
        assert hashlib.file_digest(f, "sha256").hexdigest() == digest.hexdigest()
    assert out.stat().st_size == SIZE_MB << 20
    assert peak_kib < 80 * 1024, f"peak RSS {peak_kib // 1024} MB for a {SIZE_MB} MB artifact"


def test_a_damaged_large_artifact_leaves_no_output(tmp_path):
    key = os.urandom(32)
    keyring = Keyring.from_keys({"k1": key}, active="k1")
    artifact, out = tmp_path / "a.drp", tmp_path / "out"
    data = os.urandom(5 << 20)
    with open(artifact, "wb") as dst:
        formats.encrypt_stream(io.BytesIO(data), dst, artifact_id=uuid.uuid4(), keyring=keyring, chunk_size=1 << 20)
    with open(artifact, "r+b") as f:
        f.seek(3 << 20)
        byte = f.read(1)
        f.seek(3 << 20)
        f.write(bytes([byte[0] ^ 1]))
    script = Path(formats.__file__).parent / "decrypt_artifact.py"

    returncode, _, output = run_measured(script, artifact, out, key)

    assert returncode != 0
    assert "InvalidTag" in output
    assert not out.exists() and not Path(f"{out}.partial").exists()
