"""Health checks: SSRF attempts are refused before anything is sent; allowlisted servers are really called."""

import ipaddress
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from restores import healthchecks
from restores.healthchecks import Allowlist, HealthCheckRefused, is_public_address


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        server = self.server
        server.hits.append((self.path, self.headers.get("Host")))
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", server.redirect_to)
            self.end_headers()
        elif self.path.startswith("/status/"):
            self.send_response(int(self.path.rsplit("/", 1)[1]))
            self.end_headers()
        elif self.path == "/slow":
            # Dribbles its status line, one byte at a time, for longer than any timeout.
            for byte in b"HTTP/1.1 200 OK\r\n":
                try:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.3)
        elif self.path == "/big":
            self.send_response(200)
            self.send_header("Content-Length", str(50 * 1024 * 1024))
            self.end_headers()
            try:
                for _ in range(50 * 1024):
                    self.wfile.write(b"x" * 1024)
            except OSError:
                return
        else:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(b"ok")


class LocalServer:
    def __init__(self):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.hits = []
        self.httpd.redirect_to = "http://169.254.169.254/latest/meta-data/"
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def hits(self):
        return self.httpd.hits

    def url(self, path="/health", host="127.0.0.1"):
        return f"http://{host}:{self.port}{path}"

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def local_server():
    server = LocalServer()
    yield server
    server.stop()


LOOPBACK = Allowlist.parse(["127.0.0.1"])


def check(url, expected=200, allowlist=LOOPBACK, **kwargs):
    return healthchecks.run_health_check(url, expected, allowlist=allowlist, **kwargs)


def test_it_calls_an_allowlisted_server_and_compares_its_status(local_server):
    result = check(local_server.url("/health"))
    assert result.ok and result.status == 200 and result.address == "127.0.0.1"
    assert local_server.hits == [("/health", f"127.0.0.1:{local_server.port}")]
    wrong = check(local_server.url("/status/503"))
    assert not wrong.ok and wrong.status == 503 and wrong.error == "answered 503, expected 200"
    assert check(local_server.url("/status/503"), expected=503).ok


def test_loopback_is_refused_when_the_allowlist_does_not_name_it(local_server):
    result = check(local_server.url(), allowlist=Allowlist.parse(["app.example.com", "*.example.org"]))
    assert result.refused and not result.ok and "not in the health-check allowlist" in result.error
    assert local_server.hits == []


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data/",
    "http://[fd00:ec2::254]/latest/meta-data/",
    "http://metadata.google.internal/computeMetadata/v1/",
])
def test_cloud_metadata_endpoints_are_refused(url):
    result = check(url, allowlist=Allowlist.parse(["*.example.com", "203.0.113.0/24"]))
    assert result.refused and result.status is None


@pytest.mark.parametrize("host", [
    "2130706433", "0x7f000001", "0x7f.1", "0177.0.0.1", "127.1", "017700000001", "127.0.0.01", "0", "1.2.3",
])
def test_numeric_tricks_for_an_address_are_refused_not_resolved(local_server, host):
    result = check(f"http://{host}:{local_server.port}/", allowlist=Allowlist.parse(["127.0.0.1", "0.0.0.0/0"]))
    assert result.refused and "neither a host name nor a canonical IP address" in result.error
    assert local_server.hits == []


def test_an_ipv4_mapped_ipv6_address_does_not_pass_for_the_allowlisted_ipv4_one(local_server):
    result = check(f"http://[::ffff:127.0.0.1]:{local_server.port}/")
    assert result.refused and "::ffff:7f00:1 is not in the health-check allowlist" in result.error
    assert local_server.hits == []


@pytest.mark.parametrize(("address", "public"), [
    ("8.8.8.8", True), ("2606:4700:4700::1111", True),
    ("127.0.0.1", False), ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.1.1", False),
    ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False), ("224.0.0.1", False),
    ("240.0.0.1", False), ("255.255.255.255", False), ("::1", False), ("::", False), ("fe80::1", False),
    ("fc00::1", False), ("ff02::1", False), ("::ffff:127.0.0.1", False), ("::ffff:169.254.169.254", False),
    ("::ffff:8.8.8.8", True), ("2002:7f00:1::", False), ("2002:0808:0808::", True),
    ("64:ff9b::a9fe:a9fe", False), ("64:ff9b::808:808", True), ("::127.0.0.1", False),
])
def test_only_globally_routable_addresses_count_as_public(address, public):
    assert is_public_address(ipaddress.ip_address(address)) is public


@pytest.mark.parametrize("url", [
    "ftp://127.0.0.1/", "file:///etc/passwd", "gopher://127.0.0.1:70/", "javascript:alert(1)", "dict://127.0.0.1:11211/",
    "//127.0.0.1/health", "127.0.0.1/health",
])
def test_only_http_and_https_are_allowed(url):
    with pytest.raises(HealthCheckRefused, match="only http and https"):
        healthchecks.check_url(url, LOOPBACK)


@pytest.mark.parametrize("template", [
    "http://app.example.com@127.0.0.1:{port}/",
    "http://user:secret@127.0.0.1:{port}/",
    "http://127.0.0.1:{port}\\@app.example.com/",
    "http://127.0.0.1:{port}%2f@app.example.com/",
    "http://127.0.0.1:{port} @app.example.com/",
    "http://127.0.0.1%2e:{port}/",
])
def test_user_info_and_confusable_urls_are_refused(local_server, template):
    result = check(template.format(port=local_server.port), allowlist=Allowlist.parse(["127.0.0.1", "app.example.com"]))
    assert result.refused
    assert local_server.hits == []


def test_a_redirect_to_an_internal_address_is_reported_not_followed(local_server):
    inner = LocalServer()
    try:
        local_server.httpd.redirect_to = inner.url("/admin")
        result = check(local_server.url("/redirect"))
        assert not result.ok and result.status == 302
        assert "redirects are not followed" in result.error and result.location == inner.url("/admin")
        assert inner.hits == []
        local_server.httpd.redirect_to = "http://169.254.169.254/latest/meta-data/"
        assert check(local_server.url("/redirect")).location.startswith("http://169.254.169.254/")
    finally:
        inner.stop()


def test_a_host_name_alone_does_not_unlock_its_private_addresses(local_server):
    result = check(local_server.url(host="localhost"), allowlist=Allowlist.parse(["localhost"]))
    assert result.refused and "loopback address" in result.error
    assert local_server.hits == []
    named = check(local_server.url(host="localhost"), allowlist=Allowlist.parse(["localhost", "127.0.0.1", "::1"]))
    assert named.ok and named.address == "127.0.0.1"


def test_it_connects_to_the_address_it_checked_without_a_second_lookup(local_server):
    lookups = []

    def resolver(host, port, **kwargs):
        lookups.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.9.8.7", port)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    # "app.test" does not resolve here at all: only the address checked once can have been used.
    result = check(local_server.url(host="app.test"), allowlist=Allowlist.parse(["app.test", "127.0.0.1"]),
                   resolver=resolver)
    assert result.ok and result.address == "127.0.0.1"
    assert lookups == ["app.test"]
    assert local_server.hits == [("/health", f"app.test:{local_server.port}")]


def test_a_name_resolving_only_to_private_addresses_is_refused(local_server):
    def resolver(host, port, **kwargs):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", port)),
                (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::ffff:127.0.0.1", port, 0, 0))]

    result = check(local_server.url(host="rebind.test"), allowlist=Allowlist.parse(["rebind.test"]),
                   resolver=resolver)
    assert result.refused and "link-local" in result.error and "carries 127.0.0.1, a loopback" in result.error
    assert local_server.hits == []


def test_a_server_that_dribbles_is_cut_off_at_the_timeout(local_server):
    started = time.monotonic()
    result = check(local_server.url("/slow"), timeout=1)
    assert not result.ok and result.status is None and "within 1 s" in result.error
    assert time.monotonic() - started < 2.5


def test_only_a_small_part_of_a_huge_answer_is_read(local_server):
    started = time.monotonic()
    result = check(local_server.url("/big"))
    assert result.ok
    assert time.monotonic() - started < 3


def test_a_closed_port_is_a_failed_check_not_an_exception():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = check(f"http://127.0.0.1:{port}/")
    assert not result.ok and not result.refused and result.error == "connection refused"


def test_allowlist_entries_are_names_wildcards_addresses_or_networks():
    allowlist = Allowlist.parse(["App.Example.com.", "*.example.org", "10.0.0.0/24", "[::1]", "192.0.2.7"])
    assert allowlist.allows_name("app.example.com") and allowlist.allows_name("a.b.example.org")
    assert not allowlist.allows_name("example.org") and not allowlist.allows_name("evilexample.org")
    assert allowlist.names_address(ipaddress.ip_address("10.0.0.77"))
    assert allowlist.names_address(ipaddress.ip_address("::1"))
    assert not allowlist.names_address(ipaddress.ip_address("10.0.1.1"))
    for bad in ("not a host", "http://x", "*.", "10.0.0.1/8", "127.1"):
        with pytest.raises(ValueError, match="allowlist entry"):
            Allowlist.parse([bad])


def test_the_deployment_allowlist_and_the_targets_hosts_add_up(settings, local_server):
    settings.HEALTHCHECK_ALLOWED_HOSTS = ["status.example.com"]
    allowlist = healthchecks.allowlist_for(["127.0.0.1"])
    assert allowlist.allows_name("status.example.com")
    assert healthchecks.validate_url(local_server.url(), allowlist) == local_server.url()
    with pytest.raises(HealthCheckRefused):
        healthchecks.validate_url(local_server.url(), healthchecks.allowlist_for())
    # An allowlisted name that does not resolve from the web process is accepted at save time.
    assert healthchecks.validate_url("https://status.example.com/ping", allowlist)
