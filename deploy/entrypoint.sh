#!/bin/sh
# The container's entrypoint: which process of the panel this container is.
#
#   web          migrate, collectstatic, then gunicorn (deploy/gunicorn.conf.py) on $DRPANEL_BIND
#   worker [Q..] an RQ worker on this installation's queues (all of them, or the logical names given)
#   cron         the scheduler (rq's cron); exactly one per installation
#   migrate      only the migrations (as DRPANEL_MIGRATE_DATABASE_URL's role when it is set), e.g. as a
#                one-off before an upgrade when several web containers run
#   anything else is run as a manage.py command (check --deploy, api_token NAME, audit_verify...)
#
# The commands are those of the systemd units (deploy/systemd/*.service), which a test runs.
set -eu
cd /opt/drpanel
python=/opt/drpanel/.venv/bin/python

process="${1:-web}"
[ "$#" -gt 0 ] && shift
case "$process" in
  web)
    # Migrations first: the web process must not serve a schema older than its code. Static files
    # go to $DRPANEL_VAR_DIR/static, served by whitenoise with far-future caching of hashed names.
    "$python" manage.py migrate --noinput
    "$python" manage.py collectstatic --noinput
    exec /opt/drpanel/.venv/bin/gunicorn --config deploy/gunicorn.conf.py drpanel.wsgi:application ;;
  worker)
    exec "$python" manage.py worker "$@" ;;
  cron)
    exec "$python" manage.py rqcron drpanel.cron ;;
  migrate)
    exec "$python" manage.py migrate --noinput "$@" ;;
  *)
    exec "$python" manage.py "$process" "$@" ;;
esac
