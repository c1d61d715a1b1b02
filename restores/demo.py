"""Demo data of the restores app: staging, scratch and "production" targets of the demo's database.

All three live on the server of the demo's database (its own PostgreSQL under ``make demo``, else
the panel's): ``<demo>_staging``, ``<demo>_scratch`` and ``<demo>`` itself
(``DRPANEL_DEMO_DATABASE``, default ``chatbotdysa``, created by the catalog's demo step). Their
URLs are written to ``var/demo/secrets/<database>.url`` (mode 0600) and the targets name them as
``file:`` secret references. The production target restores into the demo system's own config
directory (``var/demo/chatbotdysa-config``); staging and scratch have their own under
``var/demo/targets/``. A restore creates a missing staging or scratch database. All three receive
the ``chatbotdysa`` system's artifacts. Health checks call the panel's own ``/health``, approved
for 127.0.0.1 on each target. The demo operator may restore into all three; the demo manager
approves production restores. Safe to run again: it only changes what differs.
"""

import os

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction

from backups import demo as backups_demo
from backups.models import System
from drpanel import runtime
from restores import runbooks
from restores.models import Target
from restores.targets import target_create, target_right_grant, target_update


def targets() -> tuple:
    """(name, environment, database, description) of the three demo targets."""
    source = settings.DEMO_DATABASE
    return (
        ("chatbotdysa-staging", Target.Environment.STAGING, f"{source}_staging",
         "Staging copy of the chatbot's database, for drills and checks."),
        ("chatbotdysa-scratch", Target.Environment.SCRATCH, f"{source}_scratch",
         "Throw-away database for experiments."),
        ("chatbotdysa-production", Target.Environment.PRODUCTION, source,
         "The chatbot's live database: restores here wait for a manager's approval."),
    )


SANITY_CHECKS = [
    {"name": "the database answers", "query": "SELECT 1", "expectation": "= 1"},
    {"name": "users exist", "query": "SELECT count(*) FROM users", "expectation": ">= 1"},
]
OPERATOR_RIGHTS = ("restore_to_target",)
MANAGER_RIGHTS = {"chatbotdysa-production": ("approve_restore",)}


def _secret_file(database: str) -> str:
    """Write the database's URL to ``var/demo/secrets/<database>.url`` (0600); return its ``file:`` reference.

    ``var/demo/secrets`` is the development default of ``DRPANEL_SECRET_DIRS``: references may name it.
    """
    directory = backups_demo.demo_dir() / "secrets"
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    path = directory / f"{database}.url"
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(runtime.with_database_name(backups_demo.source_url(), database) + "\n")
    return f"file:{path}"


@transaction.atomic
def seed(out) -> None:
    port = int(os.environ.get("PORT", 8000))
    User = get_user_model()
    operator, manager = User.objects.get(username="operator"), User.objects.get(username="manager")
    system = System.objects.filter(name=backups_demo.SYSTEM).first()
    out.write("Restore targets (name / environment / database):")
    for name, environment, database, description in targets():
        if environment == Target.Environment.PRODUCTION:
            config_dir = backups_demo.demo_dir() / "chatbotdysa-config"
        else:
            config_dir = settings.VAR_DIR / "demo" / "targets" / name / "config"
        config_dir.mkdir(parents=True, exist_ok=True)
        fields = {
            "environment": environment, "description": description, "database_ref": _secret_file(database),
            "config_dir": str(config_dir), "health_check_hosts": ["127.0.0.1"], "is_active": True,
            "system": system,
        }
        checks = {"sanity_checks": SANITY_CHECKS,
                  "health_checks": [{"url": f"http://127.0.0.1:{port}/health", "expected_status": 200}]}
        target = Target.objects.filter(name=name).first()
        if target is None:
            target = target_create(actor=None, name=name, **fields, **checks)
        else:
            target_update(actor=None, target=target, **fields, **checks)
        for right in OPERATOR_RIGHTS:
            target_right_grant(actor=None, target=target, user=operator, right=right)
        for right in MANAGER_RIGHTS.get(name, ()):
            target_right_grant(actor=None, target=target, user=manager, right=right)
        out.write(f"  {name:<24} {environment:<11} {database}")
    out.write("  operator may restore into all three; manager approves production restores.")
    _seed_runbooks(out)


def _seed_runbooks(out) -> None:
    """Disaster mode: the three scenarios' runbooks (version 1 from the guide, unless an admin wrote newer ones)."""
    out.write("Runbooks (disaster mode, /incidents/):")
    for runbook in runbooks.runbooks_current():
        out.write(f"  {runbook.get_scenario_display():<38} v{runbook.version}, {len(runbook.steps)} steps")
    out.write("  operator: Dashboard → Declare incident → “database corruption or loss” on chatbotdysa into "
              "chatbotdysa-production; manager approves the restore step.")
