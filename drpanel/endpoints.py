"""Endpoints and paths a row may name, decided by the deployment (settings), never by the row.

S3 and KMS endpoint URLs (``check_endpoint``):

- https only; http only for a host in ``ENDPOINT_HTTP_HOSTS`` (``DRPANEL_ENDPOINT_HTTP_HOSTS``:
  127.0.0.1 and localhost in development, so moto's server works for tests and the demo; none in
  production);
- the host must be in ``ENDPOINT_ALLOWLIST`` (``DRPANEL_ENDPOINT_ALLOWLIST``: names, ``*.domain``;
  127.0.0.1 and localhost in development, none in production). An empty endpoint (AWS itself) is
  always allowed;
- no user name or password in the URL (credentials are secret references);
- no private, loopback, link-local or reserved address, literal or resolved, unless the host is
  in ``ENDPOINT_PRIVATE_HOSTS`` (``DRPANEL_ENDPOINT_PRIVATE_HOSTS``; the same development default).
  Names are resolved when a client is made (``resolve=True``), so a name that later points inside
  is refused then; forms check the rest when the row is saved.

Redirects: boto3's S3 clients are built with ``no_redirects`` (``drpanel.endpoints.no_redirects``
unregisters botocore's region redirector, the one place botocore follows a redirect).

Config paths of systems and config directories of targets (``check_config_path``): absolute,
without ``..``, and — symbolic links resolved — under one of ``CONFIG_ROOTS``
(``DRPANEL_CONFIG_ROOTS``; none by default, so a deployment names its roots; development also
allows the demo's ``var/demo``). Checked when a row is saved and again when a job uses it.
"""

import fnmatch
import ipaddress
import socket
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from django.conf import settings


class EndpointRefused(ValueError):
    """An endpoint URL or a config path that this deployment does not allow; the message says which rule."""


def _host_in(host: str, patterns) -> bool:
    host = host.lower().rstrip(".")
    return any(fnmatch.fnmatchcase(host, p.lower()) if p.startswith("*.") else host == p.lower() for p in patterns)


def _private(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return not ip.is_global or ip.is_multicast


def check_endpoint(url: str, *, what: str, resolve: bool = False) -> str:
    """Return ``url`` if this deployment allows a client to call it, else raise ``EndpointRefused``."""
    url = (url or "").strip()
    if not url:
        return url
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        raise EndpointRefused(f"{what}: not a valid URL") from None
    if parts.username is not None or parts.password is not None:
        raise EndpointRefused(f"{what}: no credentials in the URL (name them with secret references)")
    if parts.scheme not in ("https", "http") or not host:
        raise EndpointRefused(f"{what}: an https:// URL with a host is required")
    if parts.scheme == "http" and not _host_in(host, settings.ENDPOINT_HTTP_HOSTS):
        raise EndpointRefused(f"{what}: https only (http is allowed only for DRPANEL_ENDPOINT_HTTP_HOSTS)")
    if not _host_in(host, settings.ENDPOINT_ALLOWLIST):
        raise EndpointRefused(f"{what}: the host {host} is not in DRPANEL_ENDPOINT_ALLOWLIST")
    if _host_in(host, settings.ENDPOINT_PRIVATE_HOSTS):
        return url
    try:
        addresses = [str(ipaddress.ip_address(host.strip("[]")))]
    except ValueError:
        addresses = []
        if resolve:
            try:
                infos = socket.getaddrinfo(host, port or (443 if parts.scheme == "https" else 80),
                                           type=socket.SOCK_STREAM)
            except OSError:
                raise EndpointRefused(f"{what}: the host {host} does not resolve") from None
            addresses = [info[4][0] for info in infos]
    if any(_private(a) for a in addresses):
        raise EndpointRefused(f"{what}: {host} is a private or local address (allowed only for "
                              "DRPANEL_ENDPOINT_PRIVATE_HOSTS)")
    return url


def no_redirects(client):
    """Make a boto3 client never follow a redirect to another endpoint (botocore's S3 region redirector)."""
    from botocore.utils import S3RegionRedirectorv2

    emitter = getattr(client.meta.events, "_emitter", client.meta.events)
    for event in ("needs-retry.s3", "before-parameter-build.s3", "before-endpoint-resolution.s3"):
        for handler in list(emitter._handlers.prefix_search(event)):
            if isinstance(getattr(handler, "__self__", None), S3RegionRedirectorv2):
                emitter.unregister(event, handler)
    return client


def config_roots() -> list[Path]:
    """The directories config paths may lie under: ``DRPANEL_CONFIG_ROOTS``, and in development the demo's."""
    roots = [Path(r) for r in settings.CONFIG_ROOTS]
    if not settings.PRODUCTION:
        roots.append(Path(settings.VAR_DIR) / "demo")
    return roots


def check_config_path(path: str, *, what: str) -> str:
    """Return ``path`` if it is absolute, has no ``..`` and lies (links resolved) under a config root."""
    pure = PurePosixPath(path or "")
    if not pure.is_absolute() or ".." in pure.parts:
        raise EndpointRefused(f"{what}: {path!r} must be an absolute path without ..")
    real = Path(path).resolve()
    if not any(real.is_relative_to(root.resolve()) for root in config_roots()):
        raise EndpointRefused(f"{what}: {path} is not under a config root of this deployment (DRPANEL_CONFIG_ROOTS)")
    return path
