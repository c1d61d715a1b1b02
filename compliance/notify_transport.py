"""One apprise send in a child process with a hard deadline (no Django here: the child needs only this).

Apprise's own timeouts bound connecting and reading, but a server that accepts and then
trickles, or an SMTP server that never answers a command, could still hold the caller. The
send therefore runs in a child process that is killed at the deadline: the worker gets its
answer within ``timeout`` seconds whatever the far end does. The child reports ``(ok, log)``
through a pipe; the log is apprise's own (at INFO), which the caller scrubs before storing.
"""

import functools
import multiprocessing
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import apprise

# A forked child starts at once with apprise already imported and runs nothing but the send; it
# leaves through os._exit, so it never closes (or uses) the worker's database or Redis connections.
# (forkserver and spawn would re-import the worker's main module in the child.)
_CONTEXT = multiprocessing.get_context("fork")
# Starting the child is the panel's time, not the far end's: it has its own (generous) allowance.
START_SECONDS = 30


def with_timeouts(url: str, timeout: float) -> str:
    """``url`` with apprise's connect and read timeouts (``cto``/``rto``) set when it did not set them."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.setdefault("cto", str(timeout))
    query.setdefault("rto", str(timeout))
    return urlunsplit(parts._replace(query=urlencode(query)))


def _child(url: str, title: str, body: str, conn) -> None:
    conn.send("ready")
    try:
        notifier = apprise.Apprise()
        if not notifier.add(url):
            conn.send((False, "apprise does not understand the channel's URL"))
            return
        with apprise.LogCapture(level=apprise.logging.INFO) as log:
            ok = bool(notifier.notify(title=title, body=body, body_format=apprise.NotifyFormat.TEXT))
        conn.send((ok, log.getvalue()))
    except Exception as exc:  # anything the plugin raises is this delivery's failure, told to the parent
        conn.send((False, f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


@functools.cache
def _load_plugins() -> None:
    """Load apprise's plugins in this process once (slow), so every forked child has them."""
    apprise.Apprise().add("json://localhost")


def send(url: str, *, title: str, body: str, timeout: float) -> tuple[bool, str]:
    """Send one notification through apprise; ``(True, log)`` when it went out, else ``(False, reason)``."""
    _load_plugins()
    receiver, sender = _CONTEXT.Pipe(duplex=False)
    child = _CONTEXT.Process(target=_child, args=(with_timeouts(url, timeout), title, body, sender), daemon=True)
    child.start()
    sender.close()
    try:
        if not receiver.poll(START_SECONDS):
            return False, f"the sending process did not start within {START_SECONDS} s"
        try:
            receiver.recv()  # "ready": from here on the clock is the far end's
            if not receiver.poll(timeout):
                return False, f"no answer within {timeout:g} s: the send was stopped"
            return receiver.recv()
        except EOFError:
            return False, "the sending process died without an answer"
    finally:
        receiver.close()
        if child.is_alive():
            child.kill()
        child.join(5)
