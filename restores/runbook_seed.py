"""The first version of each scenario's runbook, seeded from the old guide (its phases 0–2, 2–10 and 10–15 min).

Plain data, read by the seeding migration and by tests: changing it changes nothing already
seeded (admins edit runbooks in the panel, which writes new versions).
"""

IMMEDIATE = "Immediate response (0–2 min)"
RECOVERY = "Recovery execution (2–10 min)"
VERIFY = "Post-recovery verification (10–15 min)"


def _auto(code, title, phase, action, seconds, help_text="", required=True):
    return {"code": code, "title": title, "phase": phase, "kind": "automatic", "action": action,
            "expected_seconds": seconds, "required": required, "evidence_required": False, "help": help_text}


def _manual(code, title, phase, seconds, help_text="", *, evidence=False, required=True):
    return {"code": code, "title": title, "phase": phase, "kind": "manual", "action": "",
            "expected_seconds": seconds, "required": required, "evidence_required": evidence, "help": help_text}


def _decision(code, title, phase, seconds, help_text=""):
    return {"code": code, "title": title, "phase": phase, "kind": "decision", "action": "",
            "expected_seconds": seconds, "required": True, "evidence_required": False, "help": help_text}


ASSESS_HELP = "Connect to the protected database, SELECT 1, and compare its table counts with the newest manifest."
POINT_HELP = "The newest full backup verified at decrypt level or better."

SEED = {
    "database": {
        "title": "Database corruption or loss",
        "steps": [
            _auto("assess", "Assess damage", IMMEDIATE, "assess", 60, ASSESS_HELP),
            _auto("recovery-point", "Identify the latest verified backup", IMMEDIATE, "recovery_point", 30,
                  POINT_HELP),
            _decision("go-restore", "Restore over the damaged database?", IMMEDIATE, 30,
                      "Continue to restore; skip (with the reason) if the damage assessment shows no restore is "
                      "needed."),
            _auto("restore", "Execute the emergency restore (database only)", RECOVERY, "restore_database", 360,
                  "A production target waits for a manager's approval (four eyes)."),
            _auto("health", "Verify restoration and application connectivity", RECOVERY, "health_checks", 60,
                  "Connect, compare row counts with the restored backup's manifest, call the target's health URLs."),
            _manual("restart", "Restart all services (backend, admin panel, web widget)", VERIFY, 120),
            _manual("endpoints", "Verify all endpoints (admin panel, web widget, backend API)", VERIFY, 120,
                    "Link what shows they answer (a monitoring graph, a ticket).", evidence=True),
            _auto("checklist", "Open the post-recovery checklist", VERIFY, "recovery_checklist", 60),
        ],
    },
    "system": {
        "title": "Complete system failure",
        "steps": [
            _manual("prerequisites", "System prerequisites check (docker, node, npm, psql on the new host)",
                    IMMEDIATE, 120),
            _auto("assess", "Assess damage", IMMEDIATE, "assess", 60, ASSESS_HELP),
            _auto("recovery-point", "Identify the latest verified backup", IMMEDIATE, "recovery_point", 30,
                  POINT_HELP),
            _auto("restore", "Database restoration onto the new server", RECOVERY, "restore_database", 360,
                  "A production target waits for a manager's approval (four eyes)."),
            _auto("config", "Configuration restoration", RECOVERY, "restore_config", 120,
                  "The config backup taken closest to the restored full, into the target's config directory."),
            _manual("application", "Application restoration (install the application, production dependencies)",
                    RECOVERY, 180),
            _manual("startup", "Service startup (docker-compose up -d)", VERIFY, 120,
                    "Link what shows the services are up.", evidence=True),
            _auto("health", "Run health checks", VERIFY, "health_checks", 60),
            _auto("checklist", "Open the post-recovery checklist", VERIFY, "recovery_checklist", 60),
        ],
    },
    "datacenter": {
        "title": "Data-center outage (cloud recovery)",
        "steps": [
            _auto("assess", "Assess damage", IMMEDIATE, "assess", 60, ASSESS_HELP),
            _decision("failover", "Fail over to the alternate region?", IMMEDIATE, 60,
                      "Continue when the primary site will not be back within the RTO target."),
            _auto("recovery-point", "Identify the latest verified backup (off-site copy)", IMMEDIATE,
                  "recovery_point", 30, POINT_HELP + " The restore reads whichever copy is reachable."),
            _manual("deploy", "Deploy to the alternate region (terraform apply)", RECOVERY, 240,
                    "Link the deployment (pipeline run, terraform output).", evidence=True),
            _auto("restore", "Restore the database from the cloud copy", RECOVERY, "restore_database", 300,
                  "A production target waits for a manager's approval (four eyes)."),
            _auto("config", "Restore configuration", RECOVERY, "restore_config", 120, required=False),
            _manual("dns", "Update DNS records to the alternate region", VERIFY, 120,
                    "Link the change (change batch id, ticket).", evidence=True),
            _auto("health", "Run health checks", VERIFY, "health_checks", 60),
            _auto("checklist", "Open the post-recovery checklist", VERIFY, "recovery_checklist", 60),
        ],
    },
}
