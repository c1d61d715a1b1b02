"""WSGI entry point: prepares services like manage.py does, then serves the panel."""

import os

from drpanel.runtime import prepare

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "drpanel.settings")
prepare()

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
