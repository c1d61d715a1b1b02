"""``GET /health/live`` and ``GET /health/ready``: the load balancer's probes, without sign-in or secrets."""

import socket

import pytest
from django.db import connection


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.django_db
def test_live_answers_without_asking_the_database_or_redis(client, settings, django_assert_num_queries):
    settings.REDIS_URL = f"redis://127.0.0.1:{closed_port()}/0"
    with django_assert_num_queries(0):
        response = client.get("/health/live")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert "no-cache" in response["Cache-Control"]


@pytest.mark.django_db
def test_ready_is_ok_with_the_database_and_redis(client, redis_conn):
    response = client.get("/health/ready")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "redis": "ok"}


@pytest.mark.django_db
def test_ready_turns_503_when_redis_is_unreachable(client, settings):
    settings.REDIS_URL = f"redis://127.0.0.1:{closed_port()}/0"
    response = client.get("/health/ready")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "database": "ok", "redis": "ConnectionError"}


@pytest.mark.django_db(transaction=True)
def test_ready_turns_503_when_the_database_is_unreachable(client, redis_conn):
    port = connection.settings_dict["PORT"]
    connection.close()
    connection.settings_dict["PORT"] = closed_port()
    try:
        response = client.get("/health/ready")
    finally:
        connection.close()
        connection.settings_dict["PORT"] = port
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable" and body["redis"] == "ok"
    assert body["database"] == "OperationalError"


@pytest.mark.django_db
def test_the_probes_need_no_sign_in_and_reveal_no_secret(client, settings):
    settings.REDIS_URL = f"redis://:hunter2-canary-probe@127.0.0.1:{closed_port()}/0"
    for path in ("/health/live", "/health/ready"):
        response = client.get(path)
        assert response.status_code in (200, 503), path
        text = response.content.decode()
        assert "hunter2-canary-probe" not in text and "127.0.0.1" not in text
        assert settings.SECRET_KEY not in text


@pytest.mark.django_db
def test_the_probes_refuse_writes(client):
    assert client.post("/health/live").status_code == 405
    assert client.post("/health/ready").status_code == 405
