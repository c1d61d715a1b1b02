#!/bin/sh
# Run once by the postgres image on an empty data directory: the panel's runtime role, a plain login
# role (not a superuser, not the tables' owner). `manage.py migrate`, run as the owner
# (DRPANEL_MIGRATE_DATABASE_URL), gives it exactly its rights on the tables.
set -eu
password="$(cat "$DRPANEL_RUNTIME_PASSWORD_FILE")"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" -v password="$password" <<'SQL'
CREATE ROLE drpanel LOGIN PASSWORD :'password';
GRANT CONNECT ON DATABASE drpanel TO drpanel;
SQL
