"""The CPU time of a command and of everything it starts, daemons included: ``bench/cputime.py pytest …``.

``/usr/bin/time`` counts only the processes its command waits for. The PostgreSQL servers the tests
start detach from ``pg_ctl``, and Chromium's helpers outlive their parents, so their CPU is lost to
it. Here the command runs under a child subreaper (Linux ``PR_SET_CHILD_SUBREAPER``): every
orphaned descendant is re-parented to this process and reaped by it, so ``RUSAGE_CHILDREN`` holds
the whole tree. The shared services the tests talk to (the panel's PostgreSQL, Redis) are not in it.
Prints ``wall``, ``cpu`` (user + system) on stderr and exits with the command's exit code. It waits
up to ``LINGER`` seconds for what the command left running, then names it (a server a test forgot to
stop, say) and leaves it uncounted.
"""

import ctypes
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36
LINGER = 30


def _left_running() -> list[str]:
    me, found = str(os.getpid()), []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            parent = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[1]
            if parent == me:
                found.append(f"{pid} " + Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")[:160])
        except (OSError, IndexError):
            continue
    return found


def main(command: list[str]) -> int:
    if not command:
        print(__doc__, file=sys.stderr)
        return 2
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print("cannot become a child subreaper (Linux only)", file=sys.stderr)
        return 2
    start = time.monotonic()
    child = subprocess.Popen(command)
    code, deadline = None, None
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG if code is not None else 0)
        except ChildProcessError:
            break
        if pid == child.pid:
            code, deadline = os.waitstatus_to_exitcode(status), time.monotonic() + LINGER
        elif pid == 0:
            if time.monotonic() > deadline:
                print("left running, not counted:\n  " + "\n  ".join(_left_running()), file=sys.stderr)
                break
            time.sleep(0.2)
    wall = time.monotonic() - start
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"wall {wall:.1f} s, cpu {used.ru_utime + used.ru_stime:.1f} s "
          f"(user {used.ru_utime:.1f}, system {used.ru_stime:.1f})", file=sys.stderr)
    return code or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
