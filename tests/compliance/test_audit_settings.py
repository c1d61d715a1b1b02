"""The audit signing key is configured strictly: required in production, refused when malformed."""

import subprocess

from tests.drpanel.test_settings import manage

PRODUCTION = {"DRPANEL_ENV": "production", "ALLOWED_HOSTS": "panel.example.com", "SECRET_KEY": "s" * 60}


def test_production_requires_the_audit_signing_key():
    result = manage("check", **PRODUCTION)
    assert result.returncode == 2
    assert result.stderr.strip() == ("drpanel: DRPANEL_AUDIT_SIGNING_KEY (or DRPANEL_AUDIT_SIGNING_KEY_FILE) "
                                     "is required when DRPANEL_ENV=production")


def test_a_key_that_is_not_ed25519_stops_start_up_with_one_line(tmp_path):
    rsa = tmp_path / "rsa.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "rsa", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(rsa)],
                   check=True, capture_output=True)
    result = manage("check", DRPANEL_AUDIT_SIGNING_KEY_FILE=str(rsa))
    assert result.returncode == 2
    assert result.stderr.strip() == "drpanel: DRPANEL_AUDIT_SIGNING_KEY: must be an Ed25519 key, not RSAPrivateKey"


def test_a_key_made_by_openssl_signs_and_its_fingerprint_is_printed(tmp_path):
    key = tmp_path / "audit.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(key)], check=True)
    public = subprocess.run(["openssl", "pkey", "-in", str(key), "-pubout"], check=True, capture_output=True,
                            text=True).stdout
    result = manage("audit_public_key", DRPANEL_AUDIT_SIGNING_KEY_FILE=str(key))
    assert result.returncode == 0, result.stderr
    assert result.stdout == public
    assert "current: fingerprint " in result.stderr
