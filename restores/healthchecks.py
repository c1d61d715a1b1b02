"""HTTP health checks that cannot be turned against the panel's own network (SSRF-safe).

A health-check URL is called by a worker after a restore. Whoever can save a URL could
otherwise make the worker fetch cloud metadata (169.254.169.254), the panel's own admin
endpoints or anything else on the internal network, so every URL passes these rules,
when it is saved (``validate_url``) and again when it runs (``run_health_check``):

1. ``http`` or ``https`` only; no user info (``user@host``), no backslashes, spaces,
   control or non-ASCII characters, no percent-encoding in the host;
2. the host is a plain DNS name or a canonical IP literal. Numeric tricks
   (``http://2130706433/``, ``http://0x7f.1/``, ``http://127.1/``, octal ``0177.0.0.1``)
   are refused, never "resolved";
3. the host is in the **allowlist**: ``DRPANEL_HEALTHCHECK_ALLOWED_HOSTS`` plus the
   target's own approved hosts. An entry is a host name (``app.example.com``), a wildcard
   (``*.example.com``: any subdomain), an IP address (``10.0.0.5``, ``::1``) or a network
   (``10.0.0.0/24``);
4. the name is resolved **once**, here, and each address is checked: private, loopback,
   link-local, multicast, reserved, unspecified, carrier-grade NAT and the like are
   refused unless an address or network entry of the allowlist names that address
   (IPv4-mapped, 6to4 and NAT64 IPv6 addresses are judged by the IPv4 address they carry).
   A host name entry alone never unlocks a private address: to call ``localhost``, list
   ``localhost, 127.0.0.1, ::1``;
5. the connection goes to the address that was checked (no second DNS lookup, so DNS
   rebinding cannot swap it); TLS still verifies the certificate against the host name;
6. redirects are never followed (a 3xx is reported with its ``Location``), timeouts are
   short (``DRPANEL_HEALTHCHECK_TIMEOUT_SECONDS`` for the whole call) and at most
   ``MAX_BODY_BYTES`` of the body are read.

Public functions: ``Allowlist.parse``, ``allowlist_for``, ``check_url``, ``validate_url``,
``resolve_allowed``, ``run_health_check``, ``run_health_checks``.
"""

import contextlib
import http.client
import ipaddress
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from django.conf import settings

MAX_URL_LENGTH = 2000
MAX_BODY_BYTES = 64 * 1024
USER_AGENT = "DR-Panel-healthcheck/1"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
# WHATWG URL parsing treats a host whose last label is a number as an IPv4 address.
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")
_FORBIDDEN_URL_CHARS = re.compile(r"[\x00-\x20\x7f\\]")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class HealthCheckRefused(ValueError):
    """The URL breaks the health-check rules; nothing was sent."""


# --- the allowlist ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Allowlist:
    """Hosts health checks may call: exact names, ``*.`` suffixes, addresses and networks."""

    names: frozenset[str] = frozenset()
    suffixes: tuple[str, ...] = ()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> "Allowlist":
        """Build an allowlist from entries; a malformed entry raises ``ValueError`` naming it."""
        names, suffixes, networks = set(), [], []
        for raw in entries:
            entry = (raw or "").strip().lower()
            if not entry:
                continue
            if entry.startswith("[") and entry.endswith("]"):
                entry = entry[1:-1]
            try:
                networks.append(ipaddress.ip_network(entry, strict=True))
                continue
            except ValueError:
                pass
            if entry.startswith("*."):
                base = entry[2:].rstrip(".")
                if not _is_host_name(base):
                    raise ValueError(f"allowlist entry {raw!r} is not a host name, address or network")
                suffixes.append("." + base)
                continue
            name = entry.rstrip(".")
            if not _is_host_name(name):
                raise ValueError(f"allowlist entry {raw!r} is not a host name, address or network")
            names.add(name)
        return cls(frozenset(names), tuple(suffixes), tuple(networks))

    def __bool__(self) -> bool:
        return bool(self.names or self.suffixes or self.networks)

    def allows_name(self, host: str) -> bool:
        return host in self.names or any(host.endswith(suffix) for suffix in self.suffixes)

    def names_address(self, address: IPAddress) -> bool:
        return any(address.version == net.version and address in net for net in self.networks)


def allowlist_for(extra: Iterable[str] = ()) -> Allowlist:
    """The deployment's allowlist (``DRPANEL_HEALTHCHECK_ALLOWED_HOSTS``) plus ``extra`` entries."""
    return Allowlist.parse([*settings.HEALTHCHECK_ALLOWED_HOSTS, *extra])


# --- addresses -------------------------------------------------------------------------------


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    if address.version != 6:
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public_address(address: IPAddress) -> bool:
    """True for a globally routable unicast address (judging IPv6 wrappers by the IPv4 inside)."""
    inner = _embedded_ipv4(address)
    if inner is not None:
        return is_public_address(inner)
    if (address.is_private or address.is_loopback or address.is_link_local or address.is_multicast
            or address.is_reserved or address.is_unspecified or not address.is_global):
        return False
    return not (address.version == 6 and address.is_site_local)


def _describe(address: IPAddress) -> str:
    inner = _embedded_ipv4(address)
    if inner is not None:
        return f"{address} (which carries {_describe(inner)})"
    for attribute, word in (("is_unspecified", "unspecified"), ("is_loopback", "loopback"),
                            ("is_link_local", "link-local"), ("is_multicast", "multicast"),
                            ("is_private", "private"), ("is_reserved", "reserved")):
        if getattr(address, attribute):
            return f"{address}, a {word} address"
    return f"{address}, not a public address"


# --- URL checks ------------------------------------------------------------------------------


def _is_host_name(host: str) -> bool:
    if not host or len(host) > 253:
        return False
    labels = host.split(".")
    if not all(_LABEL.match(label) for label in labels):
        return False
    return not _NUMERIC_LABEL.match(labels[-1])


@dataclass(frozen=True)
class CheckedURL:
    """A URL that passed the static rules: where to connect and what to ask."""

    url: str
    scheme: str
    host: str
    port: int
    target: str
    address: IPAddress | None = None  # set when the host is an IP literal


def check_url(url: str, allowlist: Allowlist) -> CheckedURL:
    """Apply the static rules (form, scheme, host, allowlist); no DNS. Raises ``HealthCheckRefused``."""
    if not isinstance(url, str) or not url:
        raise HealthCheckRefused("a health-check URL is required")
    if len(url) > MAX_URL_LENGTH:
        raise HealthCheckRefused(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if not url.isascii() or _FORBIDDEN_URL_CHARS.search(url):
        raise HealthCheckRefused("the URL contains spaces, backslashes, control or non-ASCII characters")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise HealthCheckRefused(f"only http and https URLs are allowed (not {scheme or 'no scheme'})")
    netloc = parts.netloc
    if not netloc:
        raise HealthCheckRefused("the URL names no host")
    if "@" in netloc:
        raise HealthCheckRefused("user names and passwords in the URL are refused")
    if "%" in netloc:
        raise HealthCheckRefused("percent-encoding and zone ids in the host are refused")
    try:
        port = parts.port
    except ValueError:
        raise HealthCheckRefused("the URL's port is not a number between 0 and 65535") from None
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise HealthCheckRefused("the URL names no host")
    address: IPAddress | None = None
    if netloc.startswith("["):
        try:
            address = ipaddress.IPv6Address(host)
        except ValueError:
            raise HealthCheckRefused(f"[{host}] is not an IPv6 address") from None
    else:
        try:
            address = ipaddress.IPv4Address(host)
        except ValueError:
            if not _is_host_name(host):
                raise HealthCheckRefused(
                    f"{host!r} is neither a host name nor a canonical IP address "
                    "(numeric, hex and octal forms are refused)") from None
    if address is not None:
        if not allowlist.names_address(address):
            raise HealthCheckRefused(f"{address} is not in the health-check allowlist")
    elif not allowlist.allows_name(host):
        raise HealthCheckRefused(f"{host} is not in the health-check allowlist")
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return CheckedURL(url=url, scheme=scheme, host=host, port=port or (443 if scheme == "https" else 80),
                      target=target, address=address)


Resolver = Callable[..., list]


def resolve_allowed(checked: CheckedURL, allowlist: Allowlist, *, resolver: Resolver = socket.getaddrinfo,
                    ) -> list[IPAddress]:
    """The addresses of the URL's host that may be called, resolved once. Raises ``HealthCheckRefused``.

    An address is allowed when it is public or when the allowlist names it; the others are
    dropped, and if none is left the URL is refused with the reason.
    """
    if checked.address is not None:
        return [checked.address]
    try:
        infos = resolver(checked.host, checked.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise HealthCheckRefused(f"{checked.host} cannot be resolved ({exc})") from None
    allowed: list[IPAddress] = []
    refused: list[str] = []
    for info in infos:
        try:
            address = ipaddress.ip_address(info[4][0].split("%", 1)[0])
        except ValueError:
            continue
        if address in allowed:
            continue
        if allowlist.names_address(address) or is_public_address(address):
            allowed.append(address)
        else:
            refused.append(_describe(address))
    if not allowed:
        reason = "; ".join(refused) or "no address"
        raise HealthCheckRefused(
            f"{checked.host} resolves to {reason}; only public addresses, or addresses the allowlist "
            "names, may be called")
    return allowed


def validate_url(url: str, allowlist: Allowlist, *, resolver: Resolver = socket.getaddrinfo) -> str:
    """Save-time check: the static rules, then, if the name resolves from here, its addresses.

    A name that does not resolve from the web process is accepted (workers may see other
    DNS); it is checked again, with the address actually used, every time it runs.
    """
    checked = check_url(url.strip() if isinstance(url, str) else url, allowlist)
    try:
        resolve_allowed(checked, allowlist, resolver=resolver)
    except HealthCheckRefused as exc:
        if "cannot be resolved" not in str(exc):
            raise
    return checked.url


# --- running ---------------------------------------------------------------------------------


@dataclass
class HealthResult:
    """What one health check answered. ``refused`` means the rules stopped it before any request."""

    url: str
    expected_status: int
    ok: bool = False
    status: int | None = None
    error: str = ""
    refused: bool = False
    address: str = ""
    location: str = ""
    duration_ms: int = 0
    started_at: float = field(default_factory=time.time)

    def as_dict(self) -> dict:
        return {
            "url": self.url, "expected_status": self.expected_status, "ok": self.ok, "status": self.status,
            "error": self.error, "refused": self.refused, "address": self.address, "location": self.location,
            "duration_ms": self.duration_ms,
        }


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to the address that was checked, whatever the host name resolves to now."""

    def __init__(self, host, port, *, address: IPAddress, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self):
        self.sock = socket.create_connection((str(self._address), self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """TLS to the checked address; the certificate is still verified against the host name."""

    def __init__(self, host, port, *, address: IPAddress, timeout: float, context: ssl.SSLContext):
        super().__init__(host, port, timeout=timeout, context=context)
        self._address = address

    def connect(self):
        sock = socket.create_connection((str(self._address), self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def run_health_check(url: str, expected_status: int, *, allowlist: Allowlist, timeout: float | None = None,
                     resolver: Resolver = socket.getaddrinfo, ssl_context: ssl.SSLContext | None = None,
                     ) -> HealthResult:
    """Call one health-check URL under the rules above and compare its status; never raises.

    The whole call (connect, TLS, request, headers, up to ``MAX_BODY_BYTES`` of body) must
    finish within ``timeout`` seconds (default ``DRPANEL_HEALTHCHECK_TIMEOUT_SECONDS``).
    """
    timeout = float(timeout or settings.HEALTHCHECK_TIMEOUT_SECONDS)
    result = HealthResult(url=url, expected_status=expected_status)
    started = time.monotonic()
    try:
        checked = check_url(url, allowlist)
        addresses = resolve_allowed(checked, allowlist, resolver=resolver)
    except HealthCheckRefused as exc:
        result.refused, result.error = True, str(exc)
        return result
    last_error = ""
    for address in addresses:
        remaining = timeout - (time.monotonic() - started)
        if remaining <= 0:
            last_error = f"no answer within {timeout:g} s"
            break
        try:
            result.status, result.location = _request(checked, address, remaining, ssl_context)
            result.address = str(address)
            last_error = ""
            break
        except _DeadlinePassed:
            last_error = f"no complete answer within {timeout:g} s"
            result.address = str(address)
            break
        except (OSError, http.client.HTTPException) as exc:
            last_error = _network_error(exc, timeout)
            if not isinstance(exc, ConnectionRefusedError | socket.timeout | TimeoutError):
                result.address = str(address)
                break
    result.duration_ms = int((time.monotonic() - started) * 1000)
    if result.status is None:
        result.error = last_error or "no answer"
        return result
    result.ok = result.status == expected_status
    if not result.ok:
        result.error = f"answered {result.status}, expected {expected_status}"
        if 300 <= result.status < 400:
            result.error += f" (a redirect to {result.location or 'nowhere'}; redirects are not followed)"
    return result


class _DeadlinePassed(Exception):
    """The watchdog closed the socket: the whole exchange took longer than the timeout."""


def _request(checked: CheckedURL, address: IPAddress, timeout: float, ssl_context) -> tuple[int, str]:
    if checked.scheme == "https":
        conn = _PinnedHTTPSConnection(checked.host, checked.port, address=address, timeout=timeout,
                                      context=ssl_context or ssl.create_default_context())
    else:
        conn = _PinnedHTTPConnection(checked.host, checked.port, address=address, timeout=timeout)
    # One deadline for the whole exchange: a server dribbling bytes cannot stretch it.
    fired = threading.Event()
    watchdog = threading.Timer(timeout, _abort, args=(conn, fired))
    watchdog.daemon = True
    watchdog.start()
    try:
        conn.request("GET", checked.target, headers={
            "User-Agent": USER_AGENT, "Accept": "*/*", "Connection": "close"})
        response = conn.getresponse()
        response.read(MAX_BODY_BYTES)
        return response.status, (response.getheader("Location") or "")[:500]
    except (OSError, http.client.HTTPException):
        if fired.is_set():
            raise _DeadlinePassed from None
        raise
    finally:
        watchdog.cancel()
        conn.close()


def _abort(conn: http.client.HTTPConnection, fired: threading.Event) -> None:
    fired.set()
    sock = conn.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _network_error(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {exc.reason or exc}"
    if isinstance(exc, http.client.RemoteDisconnected | http.client.IncompleteRead | ConnectionResetError):
        return "the server closed the connection without a complete answer"
    return f"{type(exc).__name__}: {exc}"[:300]


def run_health_checks(checks: Iterable, *, extra_hosts: Iterable[str] = (), timeout: float | None = None,
                      resolver: Resolver = socket.getaddrinfo) -> list[HealthResult]:
    """Run each check (objects with ``url`` and ``expected_status``, e.g. a target's ``HealthCheck`` rows).

    ``extra_hosts`` are the target's approved hosts, added to the deployment's allowlist.
    """
    allowlist = allowlist_for(extra_hosts)
    return [run_health_check(check.url, check.expected_status, allowlist=allowlist, timeout=timeout,
                             resolver=resolver) for check in checks]
