"""One apprise send in a child process with a hard deadline (no Django here: the child imports only this).

Apprise's own timeouts bound connecting and reading, but a server that accepts and then
trickles, or an SMTP server that never answers a command, could still hold the caller. The
send therefore runs in a child process that is killed at the deadline: the worker gets its
answer within ``timeout`` seconds whatever the far end does. The child reports ``(ok, log)``
through a pipe; the log is apprise's own (at INFO), which the caller scrubs before storing.
"""

import multiprocessing
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# forkserver: the child never inherits the worker's database or Redis sockets, nor its threads.
_CONTEXT = multiprocessing.get_context("forkserver")


def with_timeouts(url: str, timeout: float) -> str:
    """``url`` with apprise's connect and read timeouts (``cto``/``rto``) set when it did not set them."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.setdefault("cto", str(timeout))
    query.setdefault("rto", str(timeout))
    return urlunsplit(parts._replace(query=urlencode(query)))


def _child(url: str, title: str, body: str, conn) -> None:
    import apprise

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


def send(url: str, *, title: str, body: str, timeout: float) -> tuple[bool, str]:
    """Send one notification through apprise; ``(True, log)`` when it went out, else ``(False, reason)``."""
    receiver, sender = _CONTEXT.Pipe(duplex=False)
    child = _CONTEXT.Process(target=_child, args=(with_timeouts(url, timeout), title, body, sender), daemon=True)
    child.start()
    sender.close()
    try:
        if not receiver.poll(timeout):
            return False, f"no answer within {timeout:g} s: the send was stopped"
        try:
            return receiver.recv()
        except EOFError:
            return False, "the sending process died without an answer"
    finally:
        receiver.close()
        if child.is_alive():
            child.kill()
        child.join(5)
