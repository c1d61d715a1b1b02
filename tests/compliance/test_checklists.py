"""Checklists: seeded templates, periods, honest evaluation, evidence-checked ticks, template edits, summaries."""

from datetime import date, timedelta

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from compliance.checklists import (
    ChecklistError,
    checklist_evaluate,
    checklist_item_tick,
    checklist_item_untick,
    checklist_month_summary,
    checklist_period_open,
    checklist_periods_current,
    checklist_template_item_add,
    checklist_template_item_change,
    parse_label,
    period_bounds,
)
from compliance.models import AuditEvent, ChecklistItem, ChecklistTemplate, ChecklistTemplateItem
from drpanel import evidence as evaluators
from drpanel.permissions import Denied
from tests.support import assert_only_roles

pytestmark = pytest.mark.django_db
pytest_plugins = ["tests.compliance_fixtures"]

ALL_ROLES = {"operator", "manager", "auditor", "admin"}
TICKERS = {"operator", "manager"}
STAGING = "weekly.staging_restore"


def item(code: str, day: date | None = None) -> ChecklistItem:
    cadence = code.split(".")[0]
    return checklist_period_open(cadence, day).items.get(code=code)


@pytest.fixture
def registry():
    """Register evaluators/validators for a test, setting aside those the apps registered; restore them after."""
    saved = {}

    def set_aside(code):
        if code not in saved:
            saved[code] = (evaluators.evaluator_for(code), evaluators.validator_for(code))
            evaluators.unregister(code)

    def _register(code, thing, *, validator=False):
        set_aside(code)
        (evaluators.register_validator if validator else evaluators.register)(code)(thing)
        return thing

    _register.set_aside = set_aside
    yield _register
    for code, (evaluator, validator) in saved.items():
        evaluators.unregister(code)
        if evaluator is not None:
            evaluators.register(code)(evaluator)
        if validator is not None:
            evaluators.register_validator(code)(type(validator))


DAILY_AUTOMATIC = ("daily.full_backup", "daily.incremental_backup", "daily.config_backup", "daily.health_score",
                   "daily.offsite_copy", "daily.encryption_integrity")


class StagingRestores:
    """A stand-in for issue 5's validator: accepts restore #7 only, and only this ISO week."""

    def candidates(self, start, end):
        return [evaluators.Evidence("Restore #7 into staging, succeeded", "/restores/7/", "restores.restorerun", "7")]

    def validate(self, start, end, object_type, object_id):
        if (object_type, object_id) != ("restores.restorerun", "7") or not start <= date(2026, 11, 24) <= end:
            raise evaluators.EvidenceRejected(f"Restore #{object_id} is not a successful staging restore of this week.")
        return self.candidates(start, end)[0]


# --- templates and periods -------------------------------------------------------------------

def test_the_templates_are_seeded_with_the_old_guides_items():
    codes = {t.cadence: list(t.items.order_by("position").values_list("code", "kind")) for t in
             ChecklistTemplate.objects.all()}
    assert [c for c, _ in codes["daily"]] == ["daily.full_backup", "daily.incremental_backup", "daily.config_backup",
                                              "daily.health_score", "daily.offsite_copy",
                                              "daily.encryption_integrity"]
    assert {k for _, k in codes["daily"]} == {"automatic"}
    assert codes["weekly"][0] == (STAGING, "manual") and len(codes["weekly"]) == 5
    assert {k for _, k in codes["monthly"]} == {"signoff"} and len(codes["monthly"]) == 5
    assert ChecklistTemplateItem.objects.get(code=STAGING).requires_evidence


def test_period_bounds_are_a_day_an_iso_week_and_a_month():
    wednesday = date(2026, 11, 25)
    assert period_bounds("daily", wednesday) == (wednesday, wednesday)
    assert period_bounds("weekly", wednesday) == (date(2026, 11, 23), date(2026, 11, 29))
    assert period_bounds("monthly", wednesday) == (date(2026, 11, 1), date(2026, 11, 30))
    assert period_bounds("monthly", date(2028, 2, 10)) == (date(2028, 2, 1), date(2028, 2, 29))
    assert parse_label("weekly", "2026-W48") == date(2026, 11, 23)
    assert parse_label("monthly", "2026-11") == date(2026, 11, 1)


def test_a_period_materialises_its_items_once_from_the_version_in_force(panel_clock):
    daily, weekly, monthly = checklist_periods_current()
    assert (daily.label, weekly.label, monthly.label) == ("2026-11-25", "2026-W48", "2026-11")
    assert weekly.items.count() == 5 and weekly.template_version == 1
    assert checklist_periods_current()[1].pk == weekly.pk
    assert AuditEvent.objects.filter(action="checklist.period_opened").count() == 3


# --- automatic items -------------------------------------------------------------------------

def test_without_evaluators_daily_items_honestly_have_no_data(panel_clock, operator, registry):
    for code in DAILY_AUTOMATIC:
        registry.set_aside(code)
    period = checklist_evaluate(actor=operator)
    statuses = set(period.items.values_list("status", flat=True))
    assert statuses == {"no_data"}
    assert period.items.first().summary.startswith("No evidence source yet")
    event = AuditEvent.objects.get(action="checklist.evaluated")
    assert event.actor_username == "operator"
    assert event.details["results"]["daily.full_backup"] == {"status": "no_data", "evidence": 0}


def test_a_registered_evaluator_decides_its_item_with_evidence(panel_clock, registry):
    seen = []

    def full_backup(day):
        seen.append(day)
        return evaluators.Result("passed", "Full backup #12 finished at 02:14",
                                 (evaluators.Evidence("artifact #12", "/artifacts/12/", "backups.artifact", "12"),))

    registry("daily.full_backup", full_backup)
    registry("daily.config_backup", lambda day: evaluators.Result("failed", "Last config backup 9 h ago"))
    registry("daily.offsite_copy", lambda day: 1 / 0)
    checklist_evaluate(actor=None)
    assert seen == [date(2026, 11, 25)]
    full = item("daily.full_backup")
    assert (full.status, full.summary) == ("passed", "Full backup #12 finished at 02:14")
    assert full.evidence == [{"label": "artifact #12", "url": "/artifacts/12/", "object_type": "backups.artifact",
                              "object_id": "12"}]
    assert item("daily.config_backup").status == "failed"
    crashed = item("daily.offsite_copy")
    assert crashed.status == "no_data" and "ZeroDivisionError" in crashed.summary
    assert AuditEvent.objects.get(action="checklist.evaluated").actor_username == "system"


def test_evaluating_needs_a_ticker_and_only_today(panel_clock, auditor, admin, operator):
    for user in (auditor, admin):
        with pytest.raises(Denied):
            checklist_evaluate(actor=user)
    with pytest.raises(ChecklistError, match="Only today's checklist"):
        checklist_evaluate(actor=operator, day=date(2026, 11, 24))


def test_the_today_page_and_api_show_no_evidence_source_yet(clients, panel_clock, registry):
    registry.set_aside("daily.full_backup")
    page = clients["auditor"].get(reverse("compliance:checklist-today")).content.decode()
    assert "No evidence source yet" in page
    body = clients["auditor"].get("/api/v1/checklists/today").json()["data"]
    assert body["date"] == "2026-11-25"
    assert [p["cadence"] for p in body["periods"]] == ["daily", "weekly", "monthly"]
    assert body["periods"][1]["items"][0]["code"] == STAGING


def test_the_api_carries_evidence_links(clients, panel_clock, registry):
    registry("daily.full_backup", lambda day: evaluators.Result(
        "passed", "ok", (evaluators.Evidence("artifact #12", "/artifacts/12/", "backups.artifact", "12"),)))
    clients["operator"].post(reverse("compliance:checklist-evaluate"))
    daily = clients["auditor"].get("/api/v1/checklists/today").json()["data"]["periods"][0]
    first = daily["items"][0]
    assert first["status"] == "passed" and first["evidence"][0]["url"] == "/artifacts/12/"


# --- manual items ----------------------------------------------------------------------------

def test_an_operator_ticks_a_weekly_item_with_a_note(panel_clock, operator):
    ticked = checklist_item_tick(actor=operator, item=item("weekly.file_access"),
                                 note="Opened the newest three artifacts in S3", evidence_url="https://s3.example.com/x")
    assert (ticked.status, ticked.ticked_by, ticked.note) == ("done", operator,
                                                              "Opened the newest three artifacts in S3")
    assert ticked.evidence[0]["url"] == "https://s3.example.com/x"
    event = AuditEvent.objects.get(action="checklist.ticked")
    assert event.details["code"] == "weekly.file_access" and event.details["period"] == "2026-W48"
    with pytest.raises(ChecklistError, match="already done"):
        checklist_item_tick(actor=operator, item=item("weekly.file_access"), note="again")


@pytest.mark.parametrize(("note", "url", "reason"), [
    ("", "", "Say what you checked"),
    ("checked", "javascript:alert(1)", "must be a panel path"),
    ("checked", "//evil.example.com/x", "must be a panel path"),
])
def test_a_tick_needs_a_note_and_a_safe_link(panel_clock, operator, note, url, reason):
    with pytest.raises(ChecklistError, match=reason):
        checklist_item_tick(actor=operator, item=item("weekly.runbook"), note=note, evidence_url=url)
    assert item("weekly.runbook").status == "pending"


def test_auditors_and_admins_do_not_tick(panel_clock, auditor, admin):
    for user in (auditor, admin):
        with pytest.raises(Denied):
            checklist_item_tick(actor=user, item=item("weekly.runbook"), note="x")


def test_the_staging_restore_cannot_be_ticked_until_a_validator_exists(panel_clock, manager, registry):
    registry.set_aside(STAGING)
    with pytest.raises(ChecklistError) as exc:
        checklist_item_tick(actor=manager, item=item(STAGING), note="restored on staging",
                            evidence_url="/restores/7/")
    assert str(exc.value) == ("“Test database restore on staging” needs a successful staging restore or "
                              "restore-test of this week; none can be linked yet.")
    assert item(STAGING).status == "pending"
    assert not AuditEvent.objects.filter(action="checklist.ticked").exists()


def test_with_a_validator_the_staging_restore_is_ticked_only_with_accepted_evidence(panel_clock, operator, registry):
    registry(STAGING, StagingRestores, validator=True)
    with pytest.raises(ChecklistError, match="pick one"):
        checklist_item_tick(actor=operator, item=item(STAGING), note="restored")
    with pytest.raises(ChecklistError, match="Restore #8 is not a successful staging restore"):
        checklist_item_tick(actor=operator, item=item(STAGING), note="restored", evidence_ref="restores.restorerun:8")
    ticked = checklist_item_tick(actor=operator, item=item(STAGING), note="restored",
                                 evidence_ref="restores.restorerun:7")
    assert ticked.status == "done"
    assert ticked.evidence == [{"label": "Restore #7 into staging, succeeded", "url": "/restores/7/",
                                "object_type": "restores.restorerun", "object_id": "7"}]


def test_the_tick_form_offers_the_validators_candidates(clients, panel_clock, registry):
    registry.set_aside(STAGING)
    page = clients["operator"].get(reverse("compliance:checklist-today")).content.decode()
    assert "Needs a successful staging restore or restore-test of this week; none can be linked yet" in page
    registry(STAGING, StagingRestores, validator=True)
    page = clients["operator"].get(reverse("compliance:checklist-today")).content.decode()
    assert 'value="restores.restorerun:7"' in page and "Restore #7 into staging, succeeded" in page


def test_only_the_ticker_unticks_and_only_while_the_period_is_open(panel_clock, operator, manager):
    ticked = checklist_item_tick(actor=operator, item=item("weekly.runbook"), note="walked through it")
    with pytest.raises(ChecklistError, match="Only the person who ticked"):
        checklist_item_untick(actor=manager, item=ticked)
    unticked = checklist_item_untick(actor=operator, item=ticked)
    assert unticked.status == "pending" and unticked.note == "" and unticked.ticked_by is None
    event = AuditEvent.objects.get(action="checklist.unticked")
    assert event.details["previous_note"] == "walked through it"
    ticked = checklist_item_tick(actor=operator, item=item("weekly.runbook"), note="walked through it again")
    panel_clock.advance(timedelta(days=5))  # Monday of the next week
    with pytest.raises(ChecklistError, match="closed; its ticks are final"):
        checklist_item_untick(actor=operator, item=ticked)


def test_a_closed_period_refuses_ticks_and_shows_its_missed_items(panel_clock, operator, clients):
    checklist_item_tick(actor=operator, item=item("weekly.runbook"), note="done")
    week = item("weekly.file_access").period
    panel_clock.advance(timedelta(days=5))
    with pytest.raises(ChecklistError, match="is closed"):
        checklist_item_tick(actor=operator, item=week.items.get(code="weekly.file_access"), note="late")
    page = clients["auditor"].get(reverse("compliance:checklist-period-detail", args=["weekly", "2026-W48"]))
    html = page.content.decode()
    assert html.count('<span class="badge bad">missed</span>') == 4
    assert "walked" not in html and "Ticked by operator" in html


# --- template edits --------------------------------------------------------------------------

def test_an_admin_edit_is_audited_and_marks_open_periods_as_changed(panel_clock, admin):
    weekly, daily = checklist_period_open("weekly"), checklist_period_open("daily")
    template_item = ChecklistTemplateItem.objects.get(code="weekly.runbook")
    checklist_template_item_change(actor=admin, item=template_item, title="Walk through the recovery runbook")
    weekly.refresh_from_db()
    assert weekly.changed_since_opened
    assert weekly.items.get(code="weekly.runbook").title == "Validate disaster recovery runbook", "kept as opened"
    template = ChecklistTemplate.objects.get(cadence="weekly")
    assert template.version == 2 and template.updated_by == admin
    event = AuditEvent.objects.get(action="checklist.template_changed")
    assert event.details["changes"] == {"title": ["Validate disaster recovery runbook",
                                                  "Walk through the recovery runbook"]}
    assert event.details["open_periods_marked"] == 1
    daily.refresh_from_db()
    assert not daily.changed_since_opened, "only the edited cadence's periods are marked"
    panel_clock.advance(timedelta(days=7))
    next_week = checklist_period_open("weekly")
    assert next_week.template_version == 2 and not next_week.changed_since_opened
    assert next_week.items.get(code="weekly.runbook").title == "Walk through the recovery runbook"


def test_an_added_item_appears_from_the_next_period_and_deactivated_ones_disappear(panel_clock, admin):
    checklist_period_open("daily")
    checklist_template_item_add(actor=admin, template=ChecklistTemplate.objects.get(cadence="daily"),
                                code="daily.monitoring_screen", title="Look at the monitoring screen", kind="manual")
    checklist_template_item_change(actor=admin, item=ChecklistTemplateItem.objects.get(code="daily.health_score"),
                                   active=False)
    assert ChecklistTemplate.objects.get(cadence="daily").version == 3
    assert checklist_period_open("daily").items.count() == 6
    panel_clock.advance(timedelta(days=1))
    codes = set(checklist_period_open("daily").items.values_list("code", flat=True))
    assert "daily.monitoring_screen" in codes and "daily.health_score" not in codes


@pytest.mark.parametrize(("cadence", "code", "kind", "field"), [
    ("weekly", "weekly.auto", "automatic", "kind"),
    ("monthly", "monthly.tick", "manual", "kind"),
    ("daily", "weekly.wrong_prefix", "manual", "code"),
    ("daily", "daily.full_backup", "automatic", "code"),
])
def test_template_additions_are_validated(admin, cadence, code, kind, field):
    with pytest.raises(ValidationError) as exc:
        checklist_template_item_add(actor=admin, template=ChecklistTemplate.objects.get(cadence=cadence),
                                    code=code, title="Something", kind=kind)
    assert field in exc.value.message_dict
    assert ChecklistTemplate.objects.get(cadence=cadence).version == 1


def test_only_admins_edit_templates(manager, operator):
    template_item = ChecklistTemplateItem.objects.get(code="weekly.runbook")
    for user in (manager, operator):
        with pytest.raises(Denied):
            checklist_template_item_change(actor=user, item=template_item, title="x")


# --- the month summary -----------------------------------------------------------------------

def test_the_month_summary_counts_and_lists_missed_items_and_missing_days(panel_clock, operator):
    panel_clock.advance(timedelta(days=-5))  # Friday the 20th: the panel starts keeping checklists
    checklist_periods_current()
    panel_clock.advance(timedelta(days=3))
    checklist_period_open("daily")
    panel_clock.advance(timedelta(days=2))  # back to Wednesday the 25th
    checklist_periods_current()
    checklist_item_tick(actor=operator, item=item("weekly.runbook"), note="ok")
    summary = checklist_month_summary(2026, 11)
    labels = [(p["cadence"], p["label"]) for p in summary["periods"]]
    assert labels == [("daily", "2026-11-20"), ("daily", "2026-11-23"), ("daily", "2026-11-25"),
                      ("weekly", "2026-W47"), ("weekly", "2026-W48"), ("monthly", "2026-11")]
    closed_day = summary["periods"][0]
    assert closed_day["closed"] and closed_day["counts"]["missed"] == 6
    assert summary["periods"][4]["counts"] == {"total": 5, "complete": 1, "pending": 4, "failed": 0, "no_data": 0,
                                               "missed": 0}
    assert summary["totals"]["missed"] == 6 + 6 + 5
    assert summary["missed"][0] == {"cadence": "daily", "period": "2026-11-20", "code": "daily.full_backup",
                                    "title": "Full backup completed successfully", "status": "pending"}
    assert summary["tracked_since"] == "2026-11-20"
    assert summary["missing"] == {"days": ["2026-11-21", "2026-11-22", "2026-11-24"], "weeks": [], "month": False}


def test_the_month_summary_puts_a_week_in_the_month_of_its_thursday(panel_clock):
    checklist_period_open("weekly", date(2026, 10, 28))  # W44: Mon 26 Oct – Sun 1 Nov, Thursday 29 Oct
    assert [p["label"] for p in checklist_month_summary(2026, 10)["periods"]] == ["2026-W44"]
    assert checklist_month_summary(2026, 11)["periods"] == []


# --- pages: who may do what ------------------------------------------------------------------

def test_the_checklist_pages_are_for_every_panel_role(clients, panel_clock):
    checklist_periods_current()
    for url in (reverse("compliance:checklist-today"), reverse("compliance:checklist-history"),
                reverse("compliance:checklist-history") + "?month=2026-10",
                reverse("compliance:checklist-period-detail", args=["weekly", "2026-W48"]),
                reverse("compliance:checklist-template-list"), "/api/v1/checklists/today"):
        assert_only_roles(clients, "get", url, allowed=ALL_ROLES)


def test_operators_and_managers_tick_and_evaluate(clients, panel_clock):
    assert_only_roles(clients, "post", reverse("compliance:checklist-evaluate"), allowed=TICKERS)
    runbook = item("weekly.runbook")
    assert_only_roles(clients, "post", reverse("compliance:checklist-item-tick", args=[runbook.pk]),
                      allowed=TICKERS, data={"note": "walked through"})
    runbook.refresh_from_db()
    assert runbook.ticked_by.username == "operator"
    assert_only_roles(clients, "post", reverse("compliance:checklist-item-untick", args=[runbook.pk]),
                      allowed=TICKERS)
    runbook.refresh_from_db()
    assert runbook.status == "pending", "the operator unticked their own tick; the manager was told no"


def test_only_admins_open_and_post_the_template_editor(clients):
    template_item = ChecklistTemplateItem.objects.get(code="weekly.runbook")
    edit = reverse("compliance:checklist-template-item-edit", args=[template_item.pk])
    assert_only_roles(clients, "get", edit, allowed={"admin"})
    assert_only_roles(clients, "post", edit, allowed={"admin"}, data={
        "title": "Walk the runbook", "description": "", "position": 5, "active": "on", "evidence_hint": ""})
    assert ChecklistTemplateItem.objects.get(code="weekly.runbook").title == "Walk the runbook"
    add = reverse("compliance:checklist-template-item-add", args=["weekly"])
    assert_only_roles(clients, "post", add, allowed={"admin"}, data={
        "weekly-code": "weekly.badge_check", "weekly-title": "Check door badges", "weekly-kind": "manual"})
    assert ChecklistTemplateItem.objects.filter(code="weekly.badge_check").exists()


def test_a_tick_refused_in_the_page_says_why(clients, panel_clock, registry):
    registry.set_aside(STAGING)
    staging = item(STAGING)
    response = clients["operator"].post(reverse("compliance:checklist-item-tick", args=[staging.pk]),
                                        {"note": "restored"}, follow=True)
    assert "none can be linked yet" in response.content.decode()
    staging.refresh_from_db()
    assert staging.status == "pending"


def test_the_history_page_lists_missed_items_and_never_opened_days(clients, panel_clock):
    panel_clock.advance(timedelta(days=-2))
    checklist_period_open("daily")
    panel_clock.advance(timedelta(days=2))
    page = clients["auditor"].get(reverse("compliance:checklist-history") + "?month=2026-11").content.decode()
    assert "Never opened" in page and "1 day (2026-11-24)" in page
    assert "Missed items" in page and "Full backup completed successfully" in page
