"""Real receivers on loopback for the notification tests: an SMTP server (aiosmtpd), a JSON webhook
(http.server), and a server that accepts connections and never answers.

Fixtures (``pytest_plugins = ["tests.notify_support"]``):

- ``smtp_receiver``: aiosmtpd on a free loopback port; the panel's ``EMAIL_HOST``/``EMAIL_PORT``
  point at it. ``.messages`` are the received mails (``to``, ``subject``, ``body``).
- ``outbox``: the mails the panel sent, read like Django's ``mail.outbox``; reading it first sends
  every due delivery in this process (``delivery_send``, exactly what the worker's job calls).
- ``webhook_receiver``: a JSON webhook; ``.url`` is its ``json://`` URL, ``.posts`` the bodies.
- ``silent_server``: accepts TCP connections and never says a word; ``.port``.
"""

import email
import email.policy
import http.server
import json
import socket
import threading
from dataclasses import dataclass, field

import pytest

from tests.notify_helpers import free_port, send_due


@dataclass
class Mail:
    to: list[str]
    subject: str
    body: str


@dataclass
class SmtpReceiver:
    port: int
    messages: list[Mail] = field(default_factory=list)

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's hook name)
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        part = parsed.get_body(preferencelist=("plain",))
        self.messages.append(Mail(to=list(envelope.rcpt_tos), subject=str(parsed["Subject"]),
                                  body=part.get_content() if part is not None else ""))
        return "250 OK"


@pytest.fixture
def smtp_receiver(settings):
    from aiosmtpd.controller import Controller

    receiver = SmtpReceiver(port=free_port())
    controller = Controller(receiver, hostname="127.0.0.1", port=receiver.port)
    controller.start()
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", receiver.port
    settings.EMAIL_HOST_USER, settings.EMAIL_HOST_PASSWORD, settings.EMAIL_USE_TLS = "", "", False
    try:
        yield receiver
    finally:
        controller.stop()


class Outbox:
    """The received mails, after sending what is due: reads like ``django.core.mail.outbox``."""

    def __init__(self, receiver: SmtpReceiver):
        self.receiver = receiver

    def _mails(self) -> list[Mail]:
        send_due()
        return self.receiver.messages

    def __iter__(self):
        return iter(self._mails())

    def __len__(self):
        return len(self._mails())

    def __getitem__(self, index):
        return self._mails()[index]

    def __eq__(self, other):
        return self._mails() == other

    def clear(self) -> None:
        send_due()
        self.receiver.messages.clear()


@pytest.fixture
def outbox(smtp_receiver):
    return Outbox(smtp_receiver)


@dataclass
class WebhookReceiver:
    port: int
    posts: list[dict] = field(default_factory=list)
    status: int = 200

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.port}/hook"


@pytest.fixture
def webhook_receiver():
    receiver = WebhookReceiver(port=0)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's hook name)
            length = int(self.headers.get("Content-Length") or 0)
            receiver.posts.append(json.loads(self.rfile.read(length) or b"{}"))
            self.send_response(receiver.status)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.port = server.server_port
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class SilentServer:
    port: int
    accepted: int = 0


@pytest.fixture
def silent_server():
    """Accepts every connection and never sends or reads a byte: a hung SMTP server or webhook."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    server = SilentServer(port=listener.getsockname()[1])
    held = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            server.accepted += 1
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        listener.close()
