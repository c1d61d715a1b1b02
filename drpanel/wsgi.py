"""WSGI entry point: prepares services like manage.py does, claims the installation's queues, then serves the panel.

In production the application refuses to load when its database role could bypass the audit
log (``drpanel.checks.refuse_unsafe_start``): gunicorn's workers then fail to boot.
"""

import contextlib
import os

from drpanel.runtime import prepare

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "drpanel.settings")
prepare()

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()

from drpanel.checks import refuse_unsafe_start  # noqa: E402 - needs the loaded app registry

refuse_unsafe_start("web")

from redis.exceptions import RedisError  # noqa: E402

from drpanel import queues  # noqa: E402

# Another panel holding this installation id refuses the start (InstallationConflict); Redis down
# does not: /health says so, and the workers claim the id when it is back.
with contextlib.suppress(RedisError):
    queues.claim_installation()
