#!/bin/sh
# Writes the secrets deploy/compose.yaml mounts (deploy/secrets/*, mode 0600), once: an existing
# file is never overwritten (a new backup master key would make every artifact unreadable).
# Then prints the two database URLs to put in deploy/compose.env.
set -eu
cd "$(dirname "$0")"
umask 077
mkdir -p secrets
new() { [ -e "secrets/$1" ] || { echo "writing secrets/$1" >&2; "$2" > "secrets/$1"; }; }
random() { openssl rand -base64 48 | tr -d '\n/+='; }
master_key() { printf '{"keys": {"k1": "%s"}, "active": "k1"}\n' "$(openssl rand -base64 32)"; }
audit_key() { openssl genpkey -algorithm ed25519; }
minio_user() { echo drpanel; }
new secret_key random
new audit-signing-key.pem audit_key
new keys.json master_key
new postgres_owner_password random
new postgres_runtime_password random
new minio_root_user minio_user
new minio_root_password random
# Secrets are bind-mounted with their host owner and mode: each must belong to the user that reads
# it in its container (the panel: 10001, the postgres image: 999; MinIO runs as root). The panel
# refuses a master-key file that others could read.
owner() { if [ "$(id -u)" = 0 ]; then chown "$1" "secrets/$2"; else echo "run: sudo chown $1 deploy/secrets/$2" >&2; fi; }
for f in secret_key audit-signing-key.pem keys.json; do owner 10001:10001 "$f"; done
for f in postgres_owner_password postgres_runtime_password; do owner 999:999 "$f"; done
echo "DATABASE_URL=postgresql://drpanel:$(cat secrets/postgres_runtime_password)@postgres:5432/drpanel"
echo "DRPANEL_MIGRATE_DATABASE_URL=postgresql://drpanel_owner:$(cat secrets/postgres_owner_password)@postgres:5432/drpanel"
echo "Keep a copy of secrets/keys.json and secrets/audit-signing-key.pem outside this host: without them" >&2
echo "backups cannot be decrypted and exports cannot be verified." >&2
