"""Child processes of a restore (pg_restore, psql): they die with the worker, and are fed a stream."""

import contextlib
import ctypes
import signal
import subprocess
from collections.abc import Callable, Iterable

CHUNK_BYTES = 1024 * 1024


def die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # A worker killed with SIGKILL must not leave a pg_restore writing into the side database.
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


def spawn(cmd: list[str], env: dict, *, stdin) -> subprocess.Popen:
    """Start a client tool with piped output that dies with the worker."""
    return subprocess.Popen(cmd, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            preexec_fn=die_with_parent)  # noqa: PLW1509 - only prctl, no locks taken


def feed(proc: subprocess.Popen, chunks: Iterable[bytes], on_chunk: Callable[[int], None] | None = None) -> int:
    """Write the stream into the child's stdin; stops quietly when the child stops reading."""
    sent = 0
    try:
        for chunk in chunks:
            if not chunk:
                continue
            proc.stdin.write(chunk)
            sent += len(chunk)
            if on_chunk is not None:
                on_chunk(sent)
        proc.stdin.close()
    except BrokenPipeError:
        # The child exited (done, or failed): its exit status and stderr tell which.
        with contextlib.suppress(OSError):
            proc.stdin.close()
    return sent
