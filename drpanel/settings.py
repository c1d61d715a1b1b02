"""Settings of the DR Panel, read once from the environment (strict, typed, 12-factor).

Every variable is documented in docs/configuration.md (a test checks it). An invalid value stops
start-up with a one-line reason (``drpanel.env.ConfigError``).
"""

import ipaddress
import re
import secrets
import socket
import zoneinfo
from datetime import timedelta
from pathlib import Path

from csp.constants import NONCE, NONE, SELF

from compliance.audit.signing import SigningKeyError, load_private_key
from drpanel import installation
from drpanel import secrets as _secrets
from drpanel.env import (
    ConfigError,
    database_settings,
    env_bool,
    env_int,
    env_list,
    env_secret,
    env_str,
)
from drpanel.runtime import DEFAULT_DATABASE_URL, DEFAULT_REDIS_URL, var_dir

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = var_dir()

DRPANEL_ENV = env_str("DRPANEL_ENV", "development", choices=("development", "production"))
PRODUCTION = DRPANEL_ENV == "production"
DEBUG = env_bool("DEBUG", False)
if PRODUCTION and DEBUG:
    raise ConfigError("DEBUG=1 is refused when DRPANEL_ENV=production")


def _secret_key() -> str:
    key = env_secret("SECRET_KEY")
    if key:
        if PRODUCTION and len(key) < 50:
            raise ConfigError("SECRET_KEY must be at least 50 characters in production")
        return key
    if PRODUCTION:
        raise ConfigError("SECRET_KEY (or SECRET_KEY_FILE) is required when DRPANEL_ENV=production")
    # Development: one random key per checkout, kept under var/ so sessions survive restarts.
    path = VAR_DIR / "secret_key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(64))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", [] if PRODUCTION else ["127.0.0.1", "localhost", "[::1]", "testserver"])
if PRODUCTION and not ALLOWED_HOSTS:
    raise ConfigError("ALLOWED_HOSTS is required when DRPANEL_ENV=production")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_rq",
    "guardian",
    "axes",
    "csp",
    "rest_framework",
    "drf_spectacular",
    "drpanel",
    "compliance",
    "backups",
    "restores",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "drpanel.middleware.RequestIdMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "drpanel.middleware.SessionLifetimeMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "drpanel.middleware.NoStoreMiddleware",
    "axes.middleware.AxesMiddleware",
    "drpanel.middleware.DenialAuditMiddleware",
]
CSRF_FAILURE_VIEW = "drpanel.views.csrf_failure"

ROOT_URLCONF = "drpanel.urls"
WSGI_APPLICATION = "drpanel.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "drpanel.context_processors.panel",
                "restores.context_processors.incidents",
            ],
            # ``|at``: a time in TIME_ZONE with the zone's abbreviation, on every page.
            "builtins": ["drpanel.templatetags.panel_time"],
        },
    },
]

# --- data stores ---------------------------------------------------------------------------

DATABASE_URL = env_str("DATABASE_URL") or DEFAULT_DATABASE_URL
DATABASES = {"default": database_settings(DATABASE_URL)}
DATABASES["default"]["CONN_MAX_AGE"] = env_int("DRPANEL_DB_CONN_MAX_AGE", 60, minimum=0)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DATABASES["default"]["TEST"] = {"NAME": env_str("DRPANEL_TEST_DATABASE") or None}
# The migration role (owner of the tables) that `manage.py migrate` runs as; the panel itself runs as
# DATABASE_URL's role (drpanel.dbroles). Not a database alias: nothing but migrate may use it.
MIGRATE_DATABASE_URL = env_str("DRPANEL_MIGRATE_DATABASE_URL") or None
MIGRATE_DATABASE = (database_settings(MIGRATE_DATABASE_URL, name_for_errors="DRPANEL_MIGRATE_DATABASE_URL")
                    if MIGRATE_DATABASE_URL else None)
if MIGRATE_DATABASE and MIGRATE_DATABASE["NAME"] != DATABASES["default"]["NAME"]:
    raise ConfigError("DRPANEL_MIGRATE_DATABASE_URL must name the same database as DATABASE_URL")
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL") or DEFAULT_REDIS_URL
# Queues are per installation (drpanel.installation): the logical queue "restore" is "drp-<id>:restore"
# in Redis, so two panels sharing a Redis database never take each other's jobs.
DATABASE_IDENTITY = installation.database_identity(DATABASES["default"]["HOST"], DATABASES["default"]["PORT"],
                                                    DATABASES["default"]["NAME"])
INSTALLATION_ID = env_str("DRPANEL_INSTALLATION_ID") or installation.derive(DATABASE_IDENTITY)
if reason := installation.validate(INSTALLATION_ID):
    raise ConfigError(reason)
RQ_QUEUE_PREFIX = installation.queue_prefix(INSTALLATION_ID)
RQ_QUEUE_NAMES = ("default", "backup", "verify", "restore")
RQ_QUEUES = {RQ_QUEUE_PREFIX + name: {"URL": REDIS_URL, "DEFAULT_TIMEOUT": 6 * 3600} for name in RQ_QUEUE_NAMES}
RQ = {"WORKER_CLASS": "drpanel.worker.PanelWorker"}
# The host a run records as the one that ran it (worker pools, docs/many-hosts.md): this machine's name unless
# the deployment names it (a container's host name is rarely the one people know).
WORKER_HOST = (env_str("DRPANEL_WORKER_HOST") or socket.gethostname())[:100]
# A worker whose last heartbeat is older than this is dead (drpanel.worker.PanelWorker heartbeats well within it).
WORKER_TTL_SECONDS = env_int("DRPANEL_WORKER_TTL_SECONDS", 60, minimum=20, maximum=3600)
RQ_SHOW_ADMIN_LINK = False

# --- authentication and sessions -----------------------------------------------------------

AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "drpanel.permissions.PermissionBackend",  # ModelBackend, reading permissions in one statement
    "guardian.backends.ObjectPermissionBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "drpanel:login"
LOGIN_REDIRECT_URL = "drpanel:dashboard"
LOGOUT_REDIRECT_URL = "drpanel:login"

SESSION_IDLE_MINUTES = env_int("DRPANEL_SESSION_IDLE_MINUTES", 30, minimum=1, maximum=24 * 60)
SESSION_COOKIE_AGE = SESSION_IDLE_MINUTES * 60
# However active, a session ends this long after sign-in (drpanel.middleware.SessionLifetimeMiddleware).
SESSION_MAX_HOURS = env_int("DRPANEL_SESSION_MAX_HOURS", 12, minimum=1, maximum=7 * 24)
SESSION_SAVE_EVERY_REQUEST = True  # the idle timeout slides with each request
SESSION_EXPIRE_AT_BROWSER_CLOSE = True
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_HTTPONLY = True
REAUTH_VALID_MINUTES = env_int("DRPANEL_REAUTH_MINUTES", 10, minimum=1, maximum=60)

AXES_FAILURE_LIMIT = env_int("DRPANEL_LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("DRPANEL_LOGIN_COOLOFF_MINUTES", 15, minimum=1))
# Two independent counters (axes ORs the items): one per username, whatever the addresses (a botnet
# guessing one account), and one per address, whatever the usernames (one host spraying many accounts).
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_LOCKOUT_CALLABLE = "drpanel.views.lockout"
AXES_RESET_ON_SUCCESS = True
AXES_VERBOSE = False
AXES_SENSITIVE_PARAMETERS = ["password", "token"]
# The client's address (drpanel.client_ip): REMOTE_ADDR, unless the deployment says how many reverse
# proxies stand in front of the panel; only then is X-Forwarded-For read, from the right.
PROXY_COUNT = env_int("DRPANEL_PROXY_COUNT", 0, minimum=0, maximum=10)
AXES_CLIENT_IP_CALLABLE = "drpanel.client_ip.client_address"
# Failed sign-ins with usernames that do not exist are counted per window of this many minutes and
# written as one audit event per window (drpanel.signin), so anonymous traffic cannot grow the chain.
UNKNOWN_SIGNIN_WINDOW_MINUTES = env_int("DRPANEL_UNKNOWN_SIGNIN_WINDOW_MINUTES", 10, minimum=1, maximum=24 * 60)

# API tokens expire this many days after their creation (shown on the token page and in the API).
TOKEN_DAYS = env_int("DRPANEL_TOKEN_DAYS", 90, minimum=1, maximum=3650)

# --- security headers ----------------------------------------------------------------------

SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env_bool("DRPANEL_SECURE_COOKIES", PRODUCTION)
SECURE_SSL_REDIRECT = env_bool("DRPANEL_SSL_REDIRECT", PRODUCTION)
SECURE_HSTS_SECONDS = env_int("DRPANEL_HSTS_SECONDS", 31536000 if PRODUCTION else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = PRODUCTION
SECURE_HSTS_PRELOAD = PRODUCTION
SECURE_REDIRECT_EXEMPT = [r"^health(/live|/ready)?$", r"^metrics$"]


def _networks(name: str) -> list:
    try:
        return [ipaddress.ip_network(item, strict=False) for item in env_list(name, [])]
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None


# ``GET /metrics`` answers callers from these networks (comma-separated CIDRs, e.g. the Prometheus
# host's 10.0.3.7/32) without a token; anyone else needs a bearer token of a user who views the panel.
METRICS_ALLOWED_NETWORKS = _networks("DRPANEL_METRICS_ALLOWED_NETWORKS")
if env_bool("DRPANEL_BEHIND_TLS_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF, NONCE],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],
        "font-src": [SELF],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [NONE],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    },
}

# --- static files, i18n --------------------------------------------------------------------

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if PRODUCTION
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}
WHITENOISE_USE_FINDERS = not PRODUCTION
LANGUAGE_CODE = "en-us"
# The zone pages show times in (each followed by its abbreviation: the ``|at`` filter); storage,
# the audit chain, exports and the API stay in UTC whatever it is.
TIME_ZONE = env_str("TIME_ZONE", "UTC")
try:
    zoneinfo.ZoneInfo(TIME_ZONE)
except (zoneinfo.ZoneInfoNotFoundError, ValueError):
    raise ConfigError(f"TIME_ZONE={TIME_ZONE!r} is not a time zone name (e.g. UTC, Europe/Madrid)") from None
USE_I18N = False
USE_TZ = True

# --- API -----------------------------------------------------------------------------------

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "drpanel.authentication.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drpanel.schema.PanelAutoSchema",
    "EXCEPTION_HANDLER": "drpanel.api.exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "DR Panel API",
    "DESCRIPTION": "Backups, verifications, restores, compliance and the audit trail of the DR Panel.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": "/api/v1",
    "COMPONENT_SPLIT_REQUEST": True,
    # Choice sets that share a field name get names of their own (else: a check --deploy warning).
    "ENUM_NAME_OVERRIDES": {
        "ArtifactKindEnum": "backups.models.Artifact.Kind",
        "TokenKindEnum": "drpanel.models.ApiToken.Kind",
        "BackupKindEnum": "backups.api.BACKUP_KINDS",
        "ArtifactStatusEnum": "backups.models.Artifact.Status",
        "CopyStatusEnum": "backups.models.ArtifactCopy.Status",
        "ContactLevelEnum": "compliance.models.Contact.Level",
    },
}

# --- audit log ------------------------------------------------------------------------------

# The Ed25519 key that signs checkpoints and exports (PEM, PKCS#8). Required in production;
# development generates one under var/ (mode 0600) on first use.
AUDIT_SIGNING_KEY = env_secret("DRPANEL_AUDIT_SIGNING_KEY")
if PRODUCTION and not AUDIT_SIGNING_KEY:
    raise ConfigError("DRPANEL_AUDIT_SIGNING_KEY (or DRPANEL_AUDIT_SIGNING_KEY_FILE) is required "
                      "when DRPANEL_ENV=production")
if AUDIT_SIGNING_KEY:
    try:
        load_private_key(AUDIT_SIGNING_KEY)
    except SigningKeyError as exc:
        raise ConfigError(f"DRPANEL_AUDIT_SIGNING_KEY: {exc}") from None
AUDIT_SIGNING_KEY_DEV_PATH = VAR_DIR / "audit-signing-key.pem"
# Public keys (*.pem) of retired signing keys: what they signed stays verifiable.
AUDIT_RETIRED_KEYS_DIR = Path(env_str("DRPANEL_AUDIT_RETIRED_KEYS_DIR") or VAR_DIR / "audit-retired-keys")
# Signed checkpoints of the chain head, outside the database.
AUDIT_CHECKPOINT_DIR = Path(env_str("DRPANEL_AUDIT_CHECKPOINT_DIR") or VAR_DIR / "audit-checkpoints")

# --- backups (catalog, artifact keys, storage) -----------------------------------------------

from backups.keys import read_key_config  # noqa: E402 - needs VAR_DIR and PRODUCTION above

BACKUP_KEYS = read_key_config(development_var_dir=None if PRODUCTION else VAR_DIR)
if PRODUCTION and not (BACKUP_KEYS.master_keys or BACKUP_KEYS.kms_key_id):
    raise ConfigError("backup master keys are required when DRPANEL_ENV=production (DRPANEL_KEYS, DRPANEL_KEYS_FILE "
                      "or DRPANEL_KMS_KEY_ID); none is ever generated there")
PG_BIN_DIR = env_str("PG_BIN_DIR") or None
BACKUP_SPOOL_DIR = Path(env_str("DRPANEL_SPOOL_DIR") or VAR_DIR / "spool")
BACKUP_CHUNK_SIZE = env_int("DRPANEL_CHUNK_SIZE", 1 << 20, minimum=1 << 10, maximum=1 << 26)
# pg_dump's gzip level for full backups (its own default is 6): level 1 costs pg_dump about half the CPU
# for archives 0–10 % larger (docs/benchmarks.md), which matters on a database server's spare cores.
BACKUP_COMPRESSION = env_int("DRPANEL_BACKUP_COMPRESSION", 1, minimum=0, maximum=9)
BACKUP_RETRY_MINUTES = env_int("DRPANEL_BACKUP_RETRY_MINUTES", 30, minimum=1)
# Logical fulls carry the server's roles (pg_dumpall --globals-only); their password verifiers only when on.
BACKUP_ROLE_PASSWORDS = env_bool("DRPANEL_BACKUP_ROLE_PASSWORDS", False)
# A running backup whose row has not heard from its worker for this long is failed by the reaper.
BACKUP_STALE_SECONDS = env_int("DRPANEL_BACKUP_STALE_SECONDS", 180, minimum=5)
# A queued backup whose RQ job is gone is queued again after this wait, and failed after the second one.
BACKUP_REQUEUE_SECONDS = env_int("DRPANEL_BACKUP_REQUEUE_SECONDS", 60, minimum=0, maximum=24 * 3600)
BACKUP_LOST_SECONDS = env_int("DRPANEL_BACKUP_LOST_SECONDS", 600, minimum=1, maximum=7 * 24 * 3600)
# Off-site (S3) calls: seconds to connect and between bytes, and attempts per call.
S3_TIMEOUT_SECONDS = env_int("DRPANEL_S3_TIMEOUT_SECONDS", 60, minimum=1, maximum=3600)
S3_ATTEMPTS = env_int("DRPANEL_S3_ATTEMPTS", 5, minimum=1, maximum=20)
APPROVAL_TTL_MINUTES = env_int("DRPANEL_APPROVAL_TTL_MINUTES", 60, minimum=1, maximum=7 * 24 * 60)
# The worker runs an approved production restore only this long after its approval (counted from the decision).
APPROVAL_EXECUTION_MINUTES = env_int("DRPANEL_APPROVAL_EXECUTION_MINUTES", 60, minimum=1, maximum=7 * 24 * 60)
# Hooks the restore app fills (dotted paths to callables), see ``backups.hooks``.
BACKUP_RESTORE_RUNNING_HOOK = env_str("DRPANEL_RESTORE_RUNNING_HOOK") or "restores.selectors.restore_running"
DEMO_DATABASE = env_str("DRPANEL_DEMO_DATABASE", "chatbotdysa")
DEMO_S3_ENDPOINT = env_str("DRPANEL_DEMO_S3_ENDPOINT") or None
DEMO_SCALE = env_int("DRPANEL_DEMO_SCALE", 1, minimum=1, maximum=100)
# The port of the demo's own PostgreSQL (the protected one); 0: the one it had last time if free, else any free one.
DEMO_PG_PORT = env_int("DRPANEL_DEMO_PG_PORT", 0, minimum=0, maximum=65535)

# --- restores -----------------------------------------------------------------------------

# Health-check hosts every target may call (names, IP addresses or networks); a target adds its own.
HEALTHCHECK_ALLOWED_HOSTS = env_list("DRPANEL_HEALTHCHECK_ALLOWED_HOSTS", [])
HEALTHCHECK_TIMEOUT_SECONDS = env_int("DRPANEL_HEALTHCHECK_TIMEOUT_SECONDS", 5, minimum=1, maximum=60)
SANITY_TIMEOUT_SECONDS = env_int("DRPANEL_SANITY_TIMEOUT_SECONDS", 30, minimum=1, maximum=3600)
RESTORE_JOBS = env_int("DRPANEL_RESTORE_JOBS", 2, minimum=1, maximum=64)
RESTORE_TEMP_DIR = env_str("DRPANEL_RESTORE_TEMP_DIR") or None
RESTORE_TEMP_HEADROOM_MB = env_int("DRPANEL_RESTORE_TEMP_HEADROOM_MB", 1024, minimum=0)
CONFIG_RESTORE_MAX_MEMBERS = env_int("DRPANEL_CONFIG_RESTORE_MAX_MEMBERS", 10000, minimum=1)
CONFIG_RESTORE_MAX_MB = env_int("DRPANEL_CONFIG_RESTORE_MAX_MB", 512, minimum=1)
# Verification and restore runs (restores.verifications, restores.execution, restores.reliability).
# The server that hosts restore-tests' throw-away databases: a secret reference to a libpq URL whose
# database name is the base of the throw-away names; by default the panel's own server, "<panel db>_verify".
VERIFY_DATABASE_REF = env_str("DRPANEL_VERIFY_DATABASE") or None
if VERIFY_DATABASE_REF:
    try:
        VERIFY_DATABASE_REF = _secrets.check_form(VERIFY_DATABASE_REF)
    except _secrets.SecretReferenceError as exc:
        raise ConfigError(f"DRPANEL_VERIFY_DATABASE: {exc}") from None
RESTORE_ROLLBACK_WINDOW_HOURS = env_int("DRPANEL_ROLLBACK_WINDOW_HOURS", 24, minimum=1, maximum=24 * 90)
RESTORE_HEALTH_WAIT_SECONDS = env_int("DRPANEL_RESTORE_HEALTH_WAIT_SECONDS", 60, minimum=0, maximum=3600)
# The run runtime (drpanel.runs): how often a running job stamps its row, and when the reconciler gives up on it.
HEARTBEAT_SECONDS = env_int("DRPANEL_HEARTBEAT_SECONDS", 5, minimum=1, maximum=600)
RUN_STALE_SECONDS = env_int("DRPANEL_RUN_STALE_SECONDS", 45, minimum=2, maximum=3600)
RUN_ENDED_JOB_GRACE_SECONDS = env_int("DRPANEL_RUN_ENDED_JOB_GRACE_SECONDS", 15, minimum=0, maximum=3600)
RUN_LOST_JOB_SECONDS = env_int("DRPANEL_RUN_LOST_JOB_SECONDS", 30, minimum=0, maximum=3600)
# A running run whose progress (bytes, percent, steps) has not moved for this long is failed, heartbeat or not.
RUN_STALL_SECONDS = env_int("DRPANEL_RUN_STALL_SECONDS", 1800, minimum=2, maximum=7 * 24 * 3600)
# A restore's RQ time limit: base + the artifact's size at a conservative throughput, capped.
RESTORE_TIMEOUT_BASE_SECONDS = env_int("DRPANEL_RESTORE_TIMEOUT_BASE_SECONDS", 1800, minimum=60, maximum=24 * 3600)
RESTORE_TIMEOUT_MB_PER_SECOND = env_int("DRPANEL_RESTORE_TIMEOUT_MB_PER_SECOND", 5, minimum=1, maximum=10000)
RESTORE_TIMEOUT_MAX_SECONDS = env_int("DRPANEL_RESTORE_TIMEOUT_MAX_SECONDS", 24 * 3600, minimum=60,
                                      maximum=7 * 24 * 3600)
if RESTORE_TIMEOUT_MAX_SECONDS < RESTORE_TIMEOUT_BASE_SECONDS:
    raise ConfigError(f"DRPANEL_RESTORE_TIMEOUT_MAX_SECONDS ({RESTORE_TIMEOUT_MAX_SECONDS}) must not be shorter than "
                      f"DRPANEL_RESTORE_TIMEOUT_BASE_SECONDS ({RESTORE_TIMEOUT_BASE_SECONDS})")
if RUN_STALE_SECONDS <= HEARTBEAT_SECONDS:
    raise ConfigError(f"DRPANEL_RUN_STALE_SECONDS ({RUN_STALE_SECONDS}) must be longer than "
                      f"DRPANEL_HEARTBEAT_SECONDS ({HEARTBEAT_SECONDS}), or every run would look dead")
# Continuous protection: where Barman keeps its configuration, WAL and base backups (on the workers that run it),
# and the Barman executable (default: the one installed next to the panel's Python, else PATH's).
BARMAN_HOME = Path(env_str("DRPANEL_BARMAN_HOME") or VAR_DIR / "barman")
BARMAN_BIN = env_str("DRPANEL_BARMAN_BIN") or None
BARMAN_TIMEOUT_SECONDS = env_int("DRPANEL_BARMAN_TIMEOUT_SECONDS", 120, minimum=5, maximum=24 * 3600)
if not BARMAN_HOME.is_absolute():
    raise ConfigError(f"DRPANEL_BARMAN_HOME={str(BARMAN_HOME)!r} must be an absolute path")
for _name, _path in (("PG_BIN_DIR", PG_BIN_DIR), ("DRPANEL_RESTORE_TEMP_DIR", RESTORE_TEMP_DIR)):
    if _path and not Path(_path).is_absolute():
        raise ConfigError(f"{_name}={_path!r} must be an absolute path")

# --- trust boundary ------------------------------------------------------------------------
# Which environment variables and files a secret reference (a row's env:/file:) may name:
# variables with one of these prefixes, files under these directories. The panel's own secrets
# never, whatever these say (drpanel.secrets.is_panel_secret).
SECRET_ENV_PREFIXES = env_list("DRPANEL_SECRET_ENV_PREFIXES", ["DRPANEL_SECRET_"])
for _prefix in SECRET_ENV_PREFIXES:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{2,}", _prefix):
        raise ConfigError(f"DRPANEL_SECRET_ENV_PREFIXES: {_prefix!r} is not a variable-name prefix of 3 or more "
                          "characters")
# (Development also allows the demo's var/demo/secrets: drpanel.secrets.secret_dirs.)
SECRET_DIRS = [Path(p) for p in env_list("DRPANEL_SECRET_DIRS", [])]
for _path in SECRET_DIRS:
    if not _path.is_absolute() or Path(_path).resolve() in (Path("/"), VAR_DIR, *VAR_DIR.parents):
        raise ConfigError(f"DRPANEL_SECRET_DIRS: {str(_path)!r} must be an absolute directory of its own (not /, "
                          "var/ or a parent of it)")
# Plain SQL dumps run as this (non-superuser) role on the target's server when set; its password
# from a secret reference when the server asks for one (restores.plainsql).
PLAIN_SQL_ROLE = env_str("DRPANEL_PLAIN_SQL_ROLE") or None
PLAIN_SQL_ROLE_PASSWORD = env_str("DRPANEL_PLAIN_SQL_ROLE_PASSWORD") or None
if PLAIN_SQL_ROLE_PASSWORD:
    try:
        PLAIN_SQL_ROLE_PASSWORD = _secrets.check_form(PLAIN_SQL_ROLE_PASSWORD)
    except _secrets.SecretReferenceError as exc:
        raise ConfigError(f"DRPANEL_PLAIN_SQL_ROLE_PASSWORD: {exc}") from None

# Endpoints (S3, KMS) and config paths a row may name (drpanel.endpoints). Development allows the
# local moto server of the tests and the demo (http on 127.0.0.1); production allows nothing it does not list.
_LOCAL = [] if PRODUCTION else ["127.0.0.1", "localhost"]
ENDPOINT_ALLOWLIST = env_list("DRPANEL_ENDPOINT_ALLOWLIST", _LOCAL)
ENDPOINT_HTTP_HOSTS = env_list("DRPANEL_ENDPOINT_HTTP_HOSTS", _LOCAL)
ENDPOINT_PRIVATE_HOSTS = env_list("DRPANEL_ENDPOINT_PRIVATE_HOSTS", _LOCAL)
CONFIG_ROOTS = [Path(p) for p in env_list("DRPANEL_CONFIG_ROOTS", [])]
for _path in CONFIG_ROOTS:
    if not _path.is_absolute() or _path == Path("/"):
        raise ConfigError(f"DRPANEL_CONFIG_ROOTS: {str(_path)!r} must be an absolute directory other than /")
SERVER_DATA_ROOTS = [Path(p) for p in env_list("DRPANEL_SERVER_DATA_ROOTS", [])]
for _path in SERVER_DATA_ROOTS:
    if not _path.is_absolute() or _path == Path("/"):
        raise ConfigError(f"DRPANEL_SERVER_DATA_ROOTS: {str(_path)!r} must be an absolute directory other than /")

# --- mail ----------------------------------------------------------------------------------

EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1, maximum=65535)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_secret("EMAIL_HOST_PASSWORD") or ""
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "drpanel@localhost")

# --- compliance: the clock, alerts, the contact roster ---------------------------------------

# Shifts the panel's clock (drpanel.clock) for demos; never in production.
CLOCK_OFFSET_SECONDS = env_int("DRPANEL_CLOCK_OFFSET_SECONDS", 0)
if PRODUCTION and CLOCK_OFFSET_SECONDS:
    raise ConfigError("DRPANEL_CLOCK_OFFSET_SECONDS is refused when DRPANEL_ENV=production")
# Links in alert mails are built without a request, so the panel must know its own address.
PANEL_BASE_URL = (env_str("DRPANEL_BASE_URL") or (
    f"https://{ALLOWED_HOSTS[0]}" if PRODUCTION else f"http://127.0.0.1:{env_int('PORT', 8000)}")).rstrip("/")
if not PANEL_BASE_URL.startswith(("http://", "https://")):
    raise ConfigError(f"DRPANEL_BASE_URL={PANEL_BASE_URL!r} must start with http:// or https://")
ALERT_ACK_LINK_HOURS = env_int("DRPANEL_ALERT_ACK_LINK_HOURS", 24, minimum=1, maximum=7 * 24)
CONTACT_REVIEW_DAYS = env_int("DRPANEL_CONTACT_REVIEW_DAYS", 30, minimum=1, maximum=366)
# The old guide's promises, which the dashboard measures against: RPO < 30 min, RTO < 15 min.
RPO_TARGET_MINUTES = env_int("DRPANEL_RPO_TARGET_MINUTES", 30, minimum=1, maximum=7 * 24 * 60)
RTO_TARGET_MINUTES = env_int("DRPANEL_RTO_TARGET_MINUTES", 15, minimum=1, maximum=7 * 24 * 60)
# A system whose last successful restore test is older than this is "drill overdue".
DRILL_OVERDUE_DAYS = env_int("DRPANEL_DRILL_OVERDUE_DAYS", 30, minimum=1, maximum=366)

# --- notifications and the scheduler's heartbeat (compliance.notifications, drpanel.cron) ------

# Every delivery (one apprise send) is killed after this many seconds, so a hanging mail server or
# webhook never holds a worker; a failed delivery is retried NOTIFY_MAX_ATTEMPTS times in all, after
# NOTIFY_RETRY_SECONDS, doubling each time (capped at an hour).
NOTIFY_TIMEOUT_SECONDS = env_int("DRPANEL_NOTIFY_TIMEOUT_SECONDS", 20, minimum=1, maximum=300)
NOTIFY_MAX_ATTEMPTS = env_int("DRPANEL_NOTIFY_MAX_ATTEMPTS", 5, minimum=1, maximum=20)
NOTIFY_RETRY_SECONDS = env_int("DRPANEL_NOTIFY_RETRY_SECONDS", 60, minimum=1, maximum=3600)
# The cron scheduler beats every CRON_HEARTBEAT_SECONDS; /health and an alert call it missing after
# CRON_HEARTBEAT_MISSING_SECONDS without a beat.
CRON_HEARTBEAT_SECONDS = env_int("DRPANEL_CRON_HEARTBEAT_SECONDS", 30, minimum=1, maximum=600)
CRON_HEARTBEAT_MISSING_SECONDS = env_int("DRPANEL_CRON_HEARTBEAT_MISSING_SECONDS", 180, minimum=2, maximum=86400)

# --- logging -------------------------------------------------------------------------------

# json: one JSON object per line (time, level, logger, message, request_id, job_id), for log shippers.
LOG_FORMAT = env_str("DRPANEL_LOG_FORMAT", "plain", choices=("plain", "json"))
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "drpanel.logformat.json_formatter"},
    },
    "filters": {"scrub": {"()": "drpanel.scrub.ScrubFilter"}, "ids": {"()": "drpanel.logformat.RequestIdFilter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["scrub", "ids"]}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO", choices=(
        "DEBUG", "INFO", "WARNING", "ERROR"))},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
