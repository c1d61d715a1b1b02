"""Secret references name a secret; the secret is read when needed and never echoed."""

import pytest

from drpanel.secrets import SecretReferenceError, resolve, validate


def test_an_env_reference_reads_the_variable(monkeypatch):
    monkeypatch.setenv("DRPANEL_SECRET_TEST", "s3cret-canary")
    assert resolve("env:DRPANEL_SECRET_TEST") == "s3cret-canary"


def test_a_file_reference_reads_a_private_file(tmp_path, settings):
    settings.SECRET_DIRS = [tmp_path]
    path = tmp_path / "db-url"
    path.write_text("postgresql://u:pw@h/db\n")
    path.chmod(0o600)
    assert resolve(f"file:{path}") == "postgresql://u:pw@h/db"


def test_a_file_readable_by_others_is_refused_without_showing_it(tmp_path, settings):
    settings.SECRET_DIRS = [tmp_path]
    path = tmp_path / "db-url"
    path.write_text("file-canary-991")
    path.chmod(0o644)
    with pytest.raises(SecretReferenceError) as caught:
        resolve(f"file:{path}")
    assert "chmod 600" in str(caught.value)
    assert "file-canary-991" not in str(caught.value)


@pytest.mark.parametrize("reference", ["postgresql://u:pw@h/db", "env:", "env:1BAD", "file:relative/path", ""])
def test_anything_but_a_reference_is_refused(reference):
    with pytest.raises(SecretReferenceError):
        validate(reference)


def test_a_missing_variable_is_named_not_guessed(monkeypatch):
    monkeypatch.delenv("DRPANEL_SECRET_NOT_SET", raising=False)
    with pytest.raises(SecretReferenceError, match="env:DRPANEL_SECRET_NOT_SET: the variable is not set"):
        resolve("env:DRPANEL_SECRET_NOT_SET")
