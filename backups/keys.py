"""Master keys: where they come from, and the providers that wrap and unwrap data keys.

Sources (read once by ``drpanel/settings.py`` through ``read_key_config``):

- ``DRPANEL_KEYS`` = ``id1:base64,id2:base64`` — 32-byte AES keys, base64 encoded;
- ``DRPANEL_KEYS_FILE`` = a JSON file ``{"keys": {"id": "base64"}, "active": "id",
  "legacy_passphrases": {"id": "passphrase"}}`` that must be mode 0600;
- ``DRPANEL_ACTIVE_KEY_ID`` — the key new artifacts are wrapped with (a keyring id or ``kms:<KeyId>``);
- ``DRPANEL_KMS_KEY_ID`` (and ``DRPANEL_KMS_ENDPOINT_URL``, ``DRPANEL_KMS_REGION``) — an AWS KMS key
  through boto3; its artifacts name the key as ``kms:<KeyId>``;
- ``DRPANEL_LEGACY_PASSPHRASES`` = ``id:passphrase,...`` — passphrases of the old guide's
  ``openssl enc`` artifacts (``legacy:<id>`` on the catalogued artifact).

In development, with none of these set, a random key is kept in ``var/backup-keys.json`` (0600),
as the development ``SECRET_KEY`` is. Key material never reaches the database, logs or pages:
only key ids do.

Providers sit behind ``KeyProvider`` and the ``PROVIDERS`` registry (keyring, KMS); clients are
created on first use.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings

from backups.formats import (
    WRAP_AES_GCM,
    WRAP_KMS,
    ArtifactError,
    Header,
    UnknownKeyIdError,
    WrongKeyError,
    wrap_aad,
)
from drpanel.env import ConfigError

KEY_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
KMS_PREFIX = "kms:"
LEGACY_PREFIX = "legacy:"


@dataclass
class KeyConfig:
    """Master keys and key settings as read from the environment (material hidden from repr)."""

    master_keys: dict[str, bytes] = field(default_factory=dict, repr=False)
    legacy_passphrases: dict[str, str] = field(default_factory=dict, repr=False)
    active_key_id: str | None = None
    kms_key_id: str | None = None
    kms_endpoint_url: str | None = None
    kms_region: str | None = None
    source: str = "none"


def _decode_key(key_id: str, value: str, where: str) -> bytes:
    if not KEY_ID.match(key_id):
        raise ConfigError(f"{where}: key id {key_id!r} must be 1-64 letters, digits, dots, dashes or underscores")
    try:
        material = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{where}: key {key_id!r} is not valid base64") from None
    if len(material) != 32:
        raise ConfigError(f"{where}: key {key_id!r} must be 32 bytes (got {len(material)})")
    return material


def _pairs(value: str, where: str) -> list[tuple[str, str]]:
    pairs = []
    for item in value.split(","):
        if not item.strip():
            continue
        key_id, sep, rest = item.strip().partition(":")
        if not sep or not rest:
            raise ConfigError(f"{where} must look like id1:value1,id2:value2")
        pairs.append((key_id.strip(), rest))
    return pairs


def _read_private_json(path: Path, where: str) -> dict:
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"{where}={str(path)!r} cannot be read: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{where}={str(path)!r} must be mode 0600 (it holds master keys)")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        raise ConfigError(f"{where}={str(path)!r} is not a readable JSON file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}={str(path)!r} must hold a JSON object")
    return data


def development_key_file(var_dir: Path) -> Path:
    """Create (once) and return ``var/backup-keys.json`` with one random key, mode 0600."""
    path = var_dir / "backup-keys.json"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key_id = "dev-" + secrets.token_hex(3)
        content = json.dumps({"keys": {key_id: base64.b64encode(os.urandom(32)).decode()}, "active": key_id})
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(content)
    return path


def read_key_config(environ=None, *, development_var_dir: Path | None = None) -> KeyConfig:
    """Parse the key settings strictly; any malformed value is a ``ConfigError`` naming the variable."""
    env = os.environ if environ is None else environ
    config = KeyConfig()
    raw = (env.get("DRPANEL_KEYS") or "").strip()
    file_name = (env.get("DRPANEL_KEYS_FILE") or "").strip()
    kms = (env.get("DRPANEL_KMS_KEY_ID") or "").strip()
    legacy = env.get("DRPANEL_LEGACY_PASSPHRASES") or ""
    file_active = None
    if raw and file_name:
        raise ConfigError("set either DRPANEL_KEYS or DRPANEL_KEYS_FILE, not both")
    if not raw and not file_name and not kms and development_var_dir is not None:
        file_name = str(development_key_file(development_var_dir))
        config.source = "development file"
    if raw:
        config.source = "DRPANEL_KEYS"
        for key_id, value in _pairs(raw, "DRPANEL_KEYS"):
            config.master_keys[key_id] = _decode_key(key_id, value, "DRPANEL_KEYS")
    if file_name:
        config.source = config.source if config.source != "none" else "DRPANEL_KEYS_FILE"
        data = _read_private_json(Path(file_name), "DRPANEL_KEYS_FILE")
        for key_id, value in (data.get("keys") or {}).items():
            config.master_keys[key_id] = _decode_key(key_id, str(value), "DRPANEL_KEYS_FILE")
        for key_id, value in (data.get("legacy_passphrases") or {}).items():
            config.legacy_passphrases[str(key_id)] = str(value)
        file_active = data.get("active")
    for key_id, value in _pairs(legacy, "DRPANEL_LEGACY_PASSPHRASES"):
        if not KEY_ID.match(key_id):
            raise ConfigError(f"DRPANEL_LEGACY_PASSPHRASES: id {key_id!r} is not a valid key id")
        config.legacy_passphrases[key_id] = value
    if kms:
        config.kms_key_id = kms
        config.kms_endpoint_url = (env.get("DRPANEL_KMS_ENDPOINT_URL") or "").strip() or None
        config.kms_region = (env.get("DRPANEL_KMS_REGION") or env.get("AWS_DEFAULT_REGION") or "").strip() or None
    active = (env.get("DRPANEL_ACTIVE_KEY_ID") or "").strip() or file_active
    if not active:
        if kms and not config.master_keys:
            active = KMS_PREFIX + kms
        elif len(config.master_keys) == 1:
            active = next(iter(config.master_keys))
        elif config.master_keys:
            raise ConfigError("several master keys are configured: name the one to use in DRPANEL_ACTIVE_KEY_ID")
    if active:
        if active.startswith(KMS_PREFIX):
            if not kms:
                raise ConfigError(f"DRPANEL_ACTIVE_KEY_ID={active!r} needs DRPANEL_KMS_KEY_ID")
        elif active not in config.master_keys:
            raise ConfigError(f"DRPANEL_ACTIVE_KEY_ID={active!r} is not one of the configured master keys")
    config.active_key_id = active
    return config


# --- providers -------------------------------------------------------------------------------

class KeyProvider:
    """Wraps and unwraps data keys under master keys it can reach."""

    name = ""
    wrap_method = 0

    def handles(self, key_id: str) -> bool:
        raise NotImplementedError

    def wrap(self, key_id: str, data_key: bytes, header: Header) -> bytes:
        raise NotImplementedError

    def unwrap(self, key_id: str, wrapped: bytes, header: Header) -> bytes:
        raise NotImplementedError

    def key_ids(self) -> list[str]:
        return []


class LocalKeyProvider(KeyProvider):
    """Master keys held by the process (``DRPANEL_KEYS`` / ``DRPANEL_KEYS_FILE``); AES-256-GCM wrapping."""

    name = "keyring"
    wrap_method = WRAP_AES_GCM

    def __init__(self, config: KeyConfig):
        self.keys = dict(config.master_keys)

    def handles(self, key_id: str) -> bool:
        return not key_id.startswith((KMS_PREFIX, LEGACY_PREFIX))

    def _key(self, key_id: str) -> bytes:
        try:
            return self.keys[key_id]
        except KeyError:
            raise UnknownKeyIdError(
                f"master key {key_id!r} is not in this keyring (add it to DRPANEL_KEYS or the keys file)") from None

    def wrap(self, key_id: str, data_key: bytes, header: Header) -> bytes:
        nonce = os.urandom(12)
        return nonce + AESGCM(self._key(key_id)).encrypt(nonce, data_key, wrap_aad(key_id, header.fixed))

    def unwrap(self, key_id: str, wrapped: bytes, header: Header) -> bytes:
        key = self._key(key_id)
        try:
            return AESGCM(key).decrypt(wrapped[:12], wrapped[12:], wrap_aad(key_id, header.fixed))
        except InvalidTag:
            raise WrongKeyError(
                f"master key {key_id!r} does not open this artifact's data key: the keyring holds a different "
                "key under that id (or the key section was changed)") from None

    def key_ids(self) -> list[str]:
        return list(self.keys)


class KmsKeyProvider(KeyProvider):
    """AWS KMS keys through boto3 (``kms:<KeyId>``); the client is created on first use."""

    name = "kms"
    wrap_method = WRAP_KMS

    def __init__(self, config: KeyConfig):
        self.configured_key_id = config.kms_key_id
        self.endpoint_url = config.kms_endpoint_url
        self.region = config.kms_region
        self._client = None

    @property
    def client(self):
        if self._client is None:
            import boto3  # on first use: slow to load, and only a KMS key provider needs it

            from drpanel import endpoints

            try:
                endpoint = endpoints.check_endpoint(self.endpoint_url, what="DRPANEL_KMS_ENDPOINT_URL", resolve=True)
            except endpoints.EndpointRefused as exc:
                raise ArtifactError(str(exc)) from None
            self._client = boto3.client("kms", endpoint_url=endpoint or None, region_name=self.region or "us-east-1")
        return self._client

    def handles(self, key_id: str) -> bool:
        return key_id.startswith(KMS_PREFIX)

    @staticmethod
    def context(header: Header) -> dict:
        return {"drpanel-artifact": str(header.artifact_id),
                "drpanel-header": hashlib.sha256(header.fixed).hexdigest()}

    def wrap(self, key_id: str, data_key: bytes, header: Header) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError  # loaded with boto3, on first use

        try:
            answer = self.client.encrypt(KeyId=key_id[len(KMS_PREFIX):], Plaintext=data_key,
                                         EncryptionContext=self.context(header))
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "NotFoundException":
                raise UnknownKeyIdError(f"KMS has no key {key_id!r}") from None
            raise ArtifactError(f"KMS refused to wrap with {key_id!r}: {code}") from None
        except BotoCoreError as exc:
            raise ArtifactError(f"KMS is unreachable: {type(exc).__name__}") from None
        return answer["CiphertextBlob"]

    def unwrap(self, key_id: str, wrapped: bytes, header: Header) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError  # loaded with boto3, on first use

        try:
            answer = self.client.decrypt(CiphertextBlob=wrapped, KeyId=key_id[len(KMS_PREFIX):],
                                         EncryptionContext=self.context(header))
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "NotFoundException":
                raise UnknownKeyIdError(f"KMS has no key {key_id!r}") from None
            if code in ("InvalidCiphertextException", "IncorrectKeyException"):
                raise WrongKeyError(f"KMS key {key_id!r} does not open this artifact's data key ({code})") from None
            raise ArtifactError(f"KMS refused to unwrap with {key_id!r}: {code}") from None
        except BotoCoreError as exc:
            raise ArtifactError(f"KMS is unreachable: {type(exc).__name__}") from None
        return answer["Plaintext"]

    def key_ids(self) -> list[str]:
        return [KMS_PREFIX + self.configured_key_id] if self.configured_key_id else []


PROVIDERS: dict[str, type[KeyProvider]] = {"keyring": LocalKeyProvider, "kms": KmsKeyProvider}


class Keyring:
    """All master keys this process can use, and the active one for new artifacts."""

    def __init__(self, config: KeyConfig):
        self.config = config
        self.providers = [cls(config) for cls in PROVIDERS.values()]
        self.active_key_id = config.active_key_id
        self.legacy_passphrases = dict(config.legacy_passphrases)

    @classmethod
    def from_keys(cls, keys: dict[str, bytes], *, active: str | None = None, **extra) -> Keyring:
        """A keyring from literal keys (tests, tools)."""
        return cls(KeyConfig(master_keys=dict(keys), active_key_id=active or next(iter(keys), None), **extra))

    def provider_for(self, key_id: str) -> KeyProvider:
        for provider in self.providers:
            if provider.handles(key_id):
                return provider
        raise UnknownKeyIdError(f"no key provider handles key id {key_id!r}")

    def key_ids(self) -> list[str]:
        return [key_id for provider in self.providers for key_id in provider.key_ids()]

    def wrap(self, data_key: bytes, *, key_id: str | None, header: Header) -> tuple[str, int, bytes]:
        key_id = key_id or self.active_key_id
        if not key_id:
            raise UnknownKeyIdError(
                "no master key is configured: set DRPANEL_KEYS, DRPANEL_KEYS_FILE or DRPANEL_KMS_KEY_ID")
        if key_id.startswith(KMS_PREFIX) and not self.config.kms_key_id:
            raise UnknownKeyIdError(f"{key_id!r} needs KMS, and DRPANEL_KMS_KEY_ID is not set")
        provider = self.provider_for(key_id)
        return key_id, provider.wrap_method, provider.wrap(key_id, data_key, header)

    def unwrap(self, header: Header) -> bytes:
        provider = self.provider_for(header.key_id)
        if header.wrap_method != provider.wrap_method:
            raise WrongKeyError(f"key {header.key_id!r} is wrapped by method {header.wrap_method}, "
                                f"which its provider ({provider.name}) does not use")
        if isinstance(provider, KmsKeyProvider) and not self.config.kms_key_id and not provider.endpoint_url:
            raise UnknownKeyIdError(f"{header.key_id!r} is a KMS key, and KMS is not configured here")
        return provider.unwrap(header.key_id, header.wrapped_key, header)


def get_keyring() -> Keyring:
    """The keyring of this process, from ``settings.BACKUP_KEYS``."""
    config = settings.BACKUP_KEYS
    cached = _cache.get("keyring")
    if cached is None or cached.config is not config:
        cached = Keyring(config)
        _cache["keyring"] = cached
    return cached


_cache: dict[str, Keyring] = {}


def generate_key() -> str:
    """A new master key, base64 (for ``DRPANEL_KEYS``)."""
    return base64.b64encode(os.urandom(32)).decode()
