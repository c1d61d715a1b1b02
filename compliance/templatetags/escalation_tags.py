"""``{% incident_escalation incident %}``: who was called about an incident, and the acknowledge button.

A tag, so the incident pages of ``restores`` show the roster's escalation without importing compliance.
"""

from django import template

from compliance.escalation import can_acknowledge, escalation_report

register = template.Library()


@register.inclusion_tag("compliance/_incident_escalation.html", takes_context=True)
def incident_escalation(context, incident):
    request = context.get("request")
    report = escalation_report(incident)
    user = getattr(request, "user", None)
    return {"incident": incident, "escalation": report, "csrf_token": context.get("csrf_token"),
            "can_acknowledge": bool(user is not None and user.is_authenticated and can_acknowledge(user)
                                    and incident.is_open and report["started_at"] and not report["acknowledged_at"])}
