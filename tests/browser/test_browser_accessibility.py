"""Accessibility in the browser (Chromium): axe-core on the main pages as each persona, the keyboard, the
contrast of fields, and live regions that announce a run's changes of state rather than every refresh.

axe-core is pinned in ``tests/browser/axe/package.json`` (and its lock file); ``make test`` installs it with
``npm ci`` into ``tests/browser/axe/node_modules``. Nothing is downloaded here. One browser visits every
page: a context per persona, one axe run per page, and one report of everything found.
"""

from datetime import timedelta
from pathlib import Path

import pytest
from guardian.shortcuts import assign_perm
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from compliance.health_recompute import health_recompute
from drpanel import clock
from restores import targets
from restores.incidents import incident_declare
from restores.models import RestoreRun, Target
from tests.support import restore_awaiting_approval

pytest_plugins = ["tests.compliance_fixtures", "tests.health_fixtures"]
pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

AXE = Path(__file__).parent / "axe" / "node_modules" / "axe-core" / "axe.min.js"
BLOCKING = ("serious", "critical")
PERSONAS = ("operator", "manager", "auditor", "admin")

# The contrast of a field's border against what touches it: the page around it and its own fill (WCAG 1.4.11).
FIELD_BORDERS = """() => {
  const rgb = (s) => { const p = s.match(/[\\d.]+/g).map(Number);
                       return {c: p.slice(0, 3), a: p.length > 3 ? p[3] : 1}; };
  const lum = ({c}) => c.map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); })
                        .reduce((sum, v, i) => sum + v * [0.2126, 0.7152, 0.0722][i], 0);
  const ratio = (x, y) => { const [a, b] = [lum(x), lum(y)].sort((m, n) => n - m); return (a + 0.05) / (b + 0.05); };
  const behind = (el) => { for (let e = el.parentElement; e; e = e.parentElement) {
    const c = rgb(getComputedStyle(e).backgroundColor); if (c.a > 0) { return c; } } return rgb("rgb(255,255,255)"); };
  const fields = document.querySelectorAll("input:not([type=hidden]):not([type=checkbox]):not([type=radio])"
                                           + ":not([type=submit]), select, textarea, button:not(.link)");
  return Array.from(fields).filter((el) => el.getClientRects().length).map((el) => {
    const style = getComputedStyle(el);
    const border = rgb(style.borderTopColor), fill = rgb(style.backgroundColor);
    const fillRatio = fill.a > 0 ? ratio(border, fill) : 21;
    return {field: el.id || el.name || el.outerHTML.slice(0, 80), width: parseFloat(style.borderTopWidth),
            ratio: Math.min(ratio(border, behind(el)), fillRatio), filled: fill.a > 0 && ratio(fill, behind(el)) >= 3};
  });
}"""

FOCUSED = """() => {
  const el = document.activeElement, style = getComputedStyle(el);
  return {tag: el.tagName.toLowerCase(), svg: el.namespaceURI === "http://www.w3.org/2000/svg", id: el.id,
          name: (el.getAttribute("aria-label") || el.textContent || "").trim().slice(0, 200),
          outline: style.outlineStyle, width: parseFloat(style.outlineWidth), box: el.getBoundingClientRect().toJSON()};
}"""


@pytest.fixture(scope="session")
def axe_source():
    if not AXE.exists():
        pytest.fail(f"{AXE} is missing: `make test` installs it (npm ci --prefix tests/browser/axe)")
    return AXE.read_text()


@pytest.fixture
def estate(catalog, healthy, roster, operator, manager, auditor, admin, outsider, monkeypatch):
    """What the main pages show: a healthy system with its charts, a production restore waiting for a manager,
    a timed drill, a pending grant of ``approve_restore`` (a protection approval), an open incident and the
    roster."""
    monkeypatch.setenv("DRPANEL_SECRET_A11Y_PRODUCTION_URL", "postgresql://127.0.0.1:1/none")
    production = Target.objects.create(name="shop-production", environment="production", system=catalog.system,
                                       database_ref="env:DRPANEL_SECRET_A11Y_PRODUCTION_URL")
    staging = Target.objects.create(name="shop-staging", environment="staging", system=catalog.system,
                                    database_ref="env:DRPANEL_SECRET_A11Y_STAGING_URL")
    for target in (production, staging):
        assign_perm("restore_to_target", operator, target)
        assign_perm("restore_to_target", manager, target)
    assign_perm("approve_restore", manager, production)
    waiting = restore_awaiting_approval(artifact=healthy["full"], target=production, requested_by=operator)
    healthy_at = clock.now() - timedelta(days=2)
    drill = RestoreRun.objects.create(artifact=healthy["full"], target=staging, mode="database-only",
                                      state="succeeded", is_drill=True, requested_by=operator,
                                      created_at=healthy_at - timedelta(seconds=420), healthy_at=healthy_at,
                                      finished_at=healthy_at, rto_seconds=420.0, rpo_seconds=3600.0)
    grant = targets.target_right_grant(actor=admin, target=staging, user=manager, right="approve_restore")
    # An open incident: its page polls, and every page shows its banner and ticking clock.
    incident = incident_declare(actor=operator, system=catalog.system, scenario="database", severity="critical",
                                target=production)
    health_recompute(catalog.system)
    return {"system": catalog.system, "artifact": healthy["full"], "waiting": waiting, "drill": drill,
            "grant": grant, "incident": incident}


def main_pages(estate) -> list[str]:
    artifact, system = estate["artifact"], estate["system"]
    return ["/", f"/systems/{system.pk}/health", "/artifacts/", f"/artifacts/{artifact.pk}/",
            f"/restores/new?artifact={artifact.pk}", "/restores/", f"/restores/runs/{estate['waiting'].pk}/",
            f"/restores/runs/{estate['drill'].pk}/", f"/approvals/protection/{estate['grant'].pk}",
            "/checklists/", "/certifications/", "/certifications/2026-11/", "/audit/", "/audit/events/1/",
            "/contacts/", "/contacts/notifications/", "/incidents/", f"/incidents/{estate['incident'].pk}/",
            "/systems/", f"/systems/{system.pk}/", "/restores/targets/", "/incidents/runbooks/", "/tokens/"]


def axe_check(page, axe_source) -> list[dict]:
    """axe-core's serious and critical violations on the page, each with the elements it names."""
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        # Evaluated through the browser's debugging protocol, so the page's content security policy stays on.
        page.evaluate(axe_source)
    result = page.evaluate("() => axe.run(document, {resultTypes: ['violations']})")
    return [{"id": v["id"], "impact": v["impact"], "help": v["help"],
             "nodes": [(n["target"], n["html"][:160], n.get("failureSummary", "")) for n in v["nodes"][:5]]}
            for v in result["violations"] if v["impact"] in BLOCKING]


def report(found: list[tuple[str, str, dict]]) -> str:
    lines = [f"{len(found)} serious or critical accessibility violation(s):"]
    for who, url, v in found:
        lines.append(f"- {who} {url}: [{v['impact']}] {v['id']}: {v['help']}")
        lines += [f"    {target} {html}\n      {summary}" for target, html, summary in v["nodes"]]
    return "\n".join(lines)


def test_the_main_pages_have_no_serious_or_critical_violations_as_any_persona(browser, live_server, sign_in,
                                                                               estate, axe_source):
    # The check itself can fail: a picture without a text alternative and a field without a label are caught.
    probe = browser.new_page()
    probe.set_content('<html lang="en"><title>probe</title><main><img src="data:,"><input type="text"></main></html>')
    assert {"image-alt", "label"} <= {v["id"] for v in axe_check(probe, axe_source)}
    probe.close()

    found, weak_fields, visited = [], [], []
    sweep = [(None, ["/login/"])] + [(who, main_pages(estate)) for who in PERSONAS] + [("outsider", ["/", "/audit/"])]
    for who, urls in sweep:
        # One browser context per persona, closed before the next one's: a page left open on a polling page
        # (a run waiting for approval, an open incident) would keep asking the live server while the others run.
        page = browser.new_context().new_page()
        if who:
            sign_in(page, who)
            page.wait_for_url(f"{live_server.url}/")
        for url in urls:
            response = page.goto(f"{live_server.url}{url}")
            visited.append((who, url, response.status))
            found += [(who or "anonymous", url, v) for v in axe_check(page, axe_source)]
            weak_fields += [(who, url, f) for f in page.evaluate(FIELD_BORDERS)
                            if not f["filled"] and (f["ratio"] < 3 or f["width"] < 1)]
        page.goto("about:blank")
        page.context.close()

    print(report(found) if found else f"axe-core: no serious or critical violation on {len(visited)} pages")
    assert not found, report(found)
    # Each role saw its pages (not an error page), so axe looked at the real thing; denials were error pages.
    refused = [(who, url, status) for who, url, status in visited if status != 200]
    assert refused == [("operator", "/audit/", 403), ("operator", "/audit/events/1/", 403),
                       ("auditor", f"/restores/new?artifact={estate['artifact'].pk}", 403),
                       ("outsider", "/", 403), ("outsider", "/audit/", 403)], refused
    assert not weak_fields, f"field borders under 3:1 against their background: {weak_fields}"


def test_the_keyboard_reaches_everything_with_a_visible_focus_skip_link_first_and_the_chart_links(
        page, live_server, sign_in, estate):
    sign_in(page, "auditor")
    page.wait_for_url(f"{live_server.url}/")
    page.keyboard.press("Tab")
    skip = page.evaluate(FOCUSED)
    assert skip["name"] == "Skip to main content" and skip["outline"] != "none"
    assert skip["box"]["top"] >= 0 and skip["box"]["width"] > 20, "the skip link shows itself when focused"
    page.keyboard.press("Enter")
    assert page.evaluate("() => document.activeElement.id") == "main"

    reached = []
    for _ in range(400):
        page.keyboard.press("Tab")
        focused = page.evaluate(FOCUSED)
        if focused["tag"] == "body" or focused["name"] == "Skip to main content":
            break
        reached.append(focused)
    else:
        pytest.fail("the focus never left the page: a keyboard trap?")
    unseen = [f for f in reached if f["outline"] == "none" or f["width"] < 2]
    assert not unseen, f"focused without a visible outline: {unseen}"
    chart_links = [f["name"] for f in reached if f["svg"]]
    assert "chatbotdysa: health score 100 since 2026-11-25 12:00 UTC" in chart_links
    assert any(name.endswith("RTO 7 min (within the target)") for name in chart_links), chart_links
    assert sum(1 for name in chart_links if name.startswith("chatbotdysa full")) >= 1, chart_links


# Counts the refreshes of the polling area and records what its announcer says.
WATCH = """() => {
  window.refreshes = 0; window.said = [];
  new MutationObserver(() => { window.refreshes += 1; })
    .observe(document.querySelector("[data-poll]"), {childList: true});
  const announcer = document.querySelector("[data-testid=poll-announcer]");
  new MutationObserver(() => { window.said.push(announcer.textContent); })
    .observe(announcer, {childList: true, characterData: true, subtree: true});
}"""


def step(name: str, state: str) -> dict:
    """A step as ``drpanel.runs.StepList`` saves it on the run's row."""
    return {"name": name, "state": state, "weight": 1, "started_at": None, "finished_at": None, "duration_ms": None,
            "bytes": None, "detail": "", "fraction": 0.0}


def test_a_polling_run_page_announces_changes_of_state_and_not_each_refresh(page, live_server, sign_in, estate):
    run = estate["waiting"]
    sign_in(page, "operator")
    page.wait_for_url(f"{live_server.url}/")
    page.goto(f"{live_server.url}/restores/runs/{run.pk}/")
    assert page.locator("[aria-live]").count() == 1, "one live region: the announcer, not the polling area"
    page.evaluate(WATCH)

    def said(count: int) -> list[str]:
        try:
            page.wait_for_function(f"() => window.said.length >= {count}", timeout=30_000)
        except PlaywrightTimeout:
            area = page.locator("[data-poll]")
            pytest.fail(f"announced {page.evaluate('() => window.said')}; the area: "
                        f"{area.get_attribute('data-poll-error')} {area.inner_html()[:400]}")
        return page.evaluate("() => window.said")

    def refreshes_later(count: int) -> None:
        start = page.evaluate("() => window.refreshes")
        page.wait_for_function(f"() => window.refreshes >= {start + count}", timeout=30_000)

    refreshes_later(3)
    assert page.evaluate("() => window.said") == [], "nothing changed, so nothing is said"

    RestoreRun.objects.filter(pk=run.pk).update(
        state="running", percent=10, steps=[step("fetch", "running"), step("restore", "pending")])
    assert said(1) == ["Restore running: step fetch"]

    RestoreRun.objects.filter(pk=run.pk).update(percent=60)
    page.wait_for_selector("progress[data-testid=run-percent][value='60']", timeout=30_000)
    refreshes_later(3)
    assert page.evaluate("() => window.said") == ["Restore running: step fetch"], "the percentage is not announced"

    RestoreRun.objects.filter(pk=run.pk).update(steps=[step("fetch", "succeeded"), step("restore", "running")])
    said(2)
    refreshes_later(2)
    assert page.evaluate("() => window.said") == ["Restore running: step fetch", "Restore running: step restore"]
    page.goto("about:blank")


def test_an_open_incident_page_keeps_quiet_while_its_clock_ticks(page, live_server, sign_in, estate):
    sign_in(page, "operator")
    page.wait_for_url(f"{live_server.url}/")
    page.goto(f"{live_server.url}/incidents/{estate['incident'].pk}/")
    assert page.locator("[aria-live]").count() == 1, "one live region: the announcer, not the polling area"
    assert page.get_by_role("region", name="Open incidents").count() == 1, "the banner on every page is no alert"
    page.evaluate(WATCH)
    clock = page.get_by_test_id("incident-clock")
    first = clock.inner_text()
    page.wait_for_function("() => window.refreshes >= 2", timeout=30_000)
    assert clock.inner_text() != first, "the clock ticked"
    assert page.evaluate("() => window.said") == [], "and nothing was announced"
    page.goto("about:blank")
