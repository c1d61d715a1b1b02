"""The worker imports the jobs before it forks: a work horse starts its job without importing it first."""

import json

from tests.drpanel.test_settings import manage

JOB_MODULES = ("backups.jobs", "compliance.jobs", "drpanel.jobs", "restores.jobs")

PROBE = (
    "import json, sys\n"
    "from drpanel.worker import preload_jobs\n"
    f"names = {JOB_MODULES!r}\n"
    "before = [m for m in names if m in sys.modules]\n"
    "preload_jobs()\n"
    "print(json.dumps({'before': before, 'after': [m for m in names if m in sys.modules]}))\n"
)


def test_the_worker_preloads_every_apps_jobs_module():
    result = manage("shell", "--no-startup", "-c", PROBE)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    # Django's start-up alone does not import them: without the preload, each horse would.
    assert seen["before"] == []
    assert seen["after"] == list(JOB_MODULES)
