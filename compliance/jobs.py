"""Jobs of compliance, run by the scheduler (``drpanel/cron.py``): thin calls into the services."""

from compliance.alerts import escalate_due, scheduler_check
from compliance.checklists import checklist_evaluate, checklist_periods_current
from compliance.contacts import contacts_review
from compliance.escalation import escalate_due as incidents_escalate_due
from compliance.escalation import escalation_start
from compliance.health_recompute import health_recompute, health_recompute_all
from compliance.notifications import deliveries_retry_due, delivery_send
from compliance.notify_events import approval_waiting_notify, certification_due_notify
from drpanel.queues import get_connection


def alerts_escalate_job() -> int:
    """Every minute: call the next level for alerts nobody acknowledged in time."""
    return escalate_due()


def incident_escalation_start_job(incident_id: str) -> int:
    """After a declaration commits: call the first levels of the roster; returns the step called (0: none)."""
    escalation = escalation_start(incident_id)
    return escalation.step if escalation is not None else 0


def incidents_escalate_job() -> int:
    """Every minute: call the next levels for incidents nobody acknowledged in time."""
    return incidents_escalate_due()


def checklist_open_job() -> list[str]:
    """Just after midnight: open today's daily checklist, and this week's and month's when new."""
    return [str(p) for p in checklist_periods_current()]


def checklist_evaluate_job() -> str:
    """Late each day: evaluate today's automatic items from the evidence of the day."""
    return str(checklist_evaluate(actor=None))


def contacts_review_job() -> dict:
    """Each morning: an info alert for every contact not verified in the last 30 days."""
    return contacts_review()


def health_recompute_job() -> list[str]:
    """Every 15 minutes: every system's health score (time alone moves it), its history and its alerts."""
    return [str(s) for s in health_recompute_all(trigger="schedule")]


def health_recompute_system_job(system_id: int | None, trigger: str) -> str | None:
    """After a backup run committed (queued by ``health_recompute_soon`` off the run's path): one system's
    score, or every system's when ``system_id`` is None."""
    if system_id is None:
        return f"{len(health_recompute_all(trigger=trigger))} system(s)"
    snapshot = health_recompute(system_id, trigger=trigger)
    return str(snapshot) if snapshot is not None else None


def delivery_send_job(delivery_id: str) -> str | None:
    """One notification delivery (queued on commit by ``compliance.notifications``); its row is the truth."""
    return delivery_send(delivery_id)


def deliveries_retry_job() -> int:
    """Every minute: queue the deliveries whose retry is due (or whose first enqueue was lost)."""
    return deliveries_retry_due()


def scheduler_check_job() -> str:
    """Every minute (and from /health when it sees a gap): alerts on the cron scheduler's heartbeat."""
    return scheduler_check(get_connection())


def approval_waiting_job(approval_id: int) -> int:
    """Queued when an approval is requested (``drpanel.approvals``): tell whoever may decide it."""
    return approval_waiting_notify(approval_id)


def certification_due_job() -> int:
    """Each morning while last month's certification is unsigned: remind the managers who may sign it."""
    return certification_due_notify()
