"""The web UI driven in Chromium: sign in, trigger a run and watch its graph turn green, open a failed
task's error and logs and resume it, a viewer without the buttons, and axe-core on the main pages."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import expect

from .conftest import UI_DIR, UiServer, shot

pytestmark = pytest.mark.slow


def sign_in(page: Any, server: UiServer, credential: str) -> None:
    page.goto(server.url + "/")  # redirected to /ui/
    expect(page).to_have_url(re.compile(r"/ui/$"))
    page.get_by_label("API key or bearer token").fill(credential)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("navigation", name="main")).to_be_visible()


def node(page: Any, task: str) -> Any:
    return page.locator(f'[data-testid="dag"] [data-task="{task}"]')


def test_sign_in_refuses_a_bad_key_then_signs_in_with_an_api_key(page: Any, ui_server: UiServer) -> None:
    page.goto(ui_server.url + "/ui/")
    page.get_by_label("API key or bearer token").fill("udop_nope_nope")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("API key")
    shot(page, "sign-in")
    sign_in(page, ui_server, ui_server.operator_key)
    expect(page.get_by_test_id("who")).to_contain_text("(operator)")
    # the pipelines list: owner, tags, schedule, version
    row = page.get_by_test_id("pipelines").get_by_role("row").filter(has_text="shop")
    expect(row).to_contain_text("data-team")
    expect(row).to_contain_text("cron 0 6 * * *")
    expect(row.get_by_role("cell").nth(4)).to_have_text("2")
    # the credential lives in this tab's sessionStorage, nowhere in the page
    assert page.evaluate("sessionStorage.getItem('udop.credential')") == ui_server.operator_key
    assert ui_server.operator_key not in page.content()
    shot(page, "pipelines")
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("API key or bearer token")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('udop.credential')") is None


def test_operator_triggers_a_run_with_typed_params_and_watches_the_dag_succeed(
    page: Any, ui_server: UiServer
) -> None:
    sign_in(page, ui_server, ui_server.token("operator", sub="olga"))
    page.get_by_role("link", name="shop", exact=True).click()
    expect(page.get_by_role("heading", name="Pipeline shop")).to_be_visible()
    # v1 -> v2 added the notify task
    expect(page.get_by_test_id("diff").locator(".add")).to_contain_text('"id": "notify"')
    expect(node(page, "notify")).to_be_visible()
    shot(page, "pipeline")
    page.get_by_label("n (int)").fill("7")
    page.get_by_label("label (str)").fill("from the browser")
    page.get_by_label("shout (bool)").check()
    page.get_by_role("button", name="Trigger run").click()
    expect(page).to_have_url(re.compile(r"#/runs/[^/?]+$"))
    run_id = page.url.rsplit("/", 1)[1]
    expect(page.get_by_test_id("run-state")).to_have_attribute("data-state", "succeeded", timeout=30_000)
    for task in ("extract", "check", "report", "archive", "notify"):
        expect(node(page, task)).to_have_attribute("data-state", "succeeded")
    run = ui_server.admin.get(f"/runs/{run_id}").json()
    assert run["params"] == {"n": 7, "label": "from the browser", "shout": True}
    # the trigger went through the API and is audited under the signed-in user
    audit = ui_server.admin.get("/audit", params={"limit": 50}).json()["items"]
    assert any(
        a["actor"] == "olga" and a["path"] == "/pipelines/shop/runs" and a["status"] == 202 for a in audit
    )
    # a task's rows, schema, lineage and check results with their (masked) sample
    node(page, "extract").focus()
    page.keyboard.press("Enter")
    panel = page.get_by_test_id("task-panel")
    expect(panel.get_by_test_id("rows")).to_have_text("7")
    expect(panel).to_contain_text("sha256:0f1e2d3c")
    node(page, "check").click()
    expect(panel.get_by_test_id("check").first).to_contain_text("not_null(email)")
    expect(panel.get_by_role("table", name=re.compile("sample of rows failing"))).to_contain_text("***")
    shot(page, "run-succeeded")
    # the output's lineage, one click away
    node(page, "extract").click()
    panel.get_by_role("link", name=re.compile("lake")).click()
    expect(page.get_by_role("heading", name="Lineage")).to_be_visible()
    expect(page.get_by_test_id("lineage")).to_contain_text("postgres://db:5432/shop.public.orders")
    shot(page, "lineage")


def test_failed_task_shows_error_and_logs_and_resume_finishes_the_run(page: Any, ui_server: UiServer) -> None:
    ui_server.tasks.fail["on"] = True
    run_id = ui_server.trigger("flaky")
    ui_server.wait_for(run_id, {"failed"})
    sign_in(page, ui_server, ui_server.operator_key)
    page.get_by_role("link", name="Runs").click()
    runs = page.get_by_test_id("runs")
    expect(runs.locator(f'[data-run="{run_id}"]')).to_contain_text("failed")
    expect(runs.locator(f'[data-run="{run_id}"] [data-testid="trigger"]')).to_have_text("api")
    page.get_by_label("started by").select_option("schedule")  # the server's filter: no such run
    expect(runs.locator(f'[data-run="{run_id}"]')).to_have_count(0)
    page.get_by_label("started by").select_option("api")
    expect(runs.locator(f'[data-run="{run_id}"]')).to_have_count(1)
    page.get_by_label("state").select_option("failed")
    expect(runs.locator("tbody tr")).not_to_have_count(0)
    for state in runs.locator("tbody tr td:nth-child(3)").all_inner_texts():
        assert state == "failed"
    shot(page, "runs")
    runs.get_by_role("link", name=run_id).click()
    expect(node(page, "flaky")).to_have_attribute("data-state", "failed")
    expect(node(page, "publish")).to_have_attribute("data-state", "upstream_failed")
    node(page, "flaky").click()
    expect(page.get_by_test_id("task-error")).to_contain_text("told to fail by the test")
    page.get_by_role("button", name="Show logs").click()
    expect(page.get_by_test_id("logs")).to_contain_text("flaky says hello from the log")
    shot(page, "run-failed")
    expect(page.get_by_role("button", name="Cancel run")).to_have_count(0)  # only for active runs
    ui_server.tasks.fail["on"] = False
    page.get_by_role("button", name="Resume run").click()
    expect(page.get_by_test_id("run-state")).to_have_attribute("data-state", "succeeded", timeout=30_000)
    expect(node(page, "publish")).to_have_attribute("data-state", "succeeded")
    expect(page.get_by_role("button", name="Resume run")).to_have_count(0)
    audit = ui_server.admin.get("/audit", params={"limit": 50}).json()["items"]
    assert any(
        a["path"] == f"/runs/{run_id}/resume" and a["status"] == 202 and a["actor_kind"] == "api_key"
        for a in audit
    ), audit


def test_retry_from_a_task_runs_it_and_what_follows_it_again(page: Any, ui_server: UiServer) -> None:
    ui_server.tasks.fail["on"] = True
    run_id = ui_server.trigger("flaky")
    ui_server.wait_for(run_id, {"failed"})
    sign_in(page, ui_server, ui_server.operator_key)
    page.goto(f"{ui_server.url}/ui/#/runs/{run_id}")
    expect(node(page, "flaky")).to_have_attribute("data-state", "failed")
    node(page, "flaky").click()
    panel = page.get_by_test_id("task-panel")
    expect(panel).to_contain_text("told to fail by the test")
    ui_server.tasks.fail["on"] = False
    panel.get_by_role("button", name="Retry from here").click()
    expect(page.get_by_test_id("run-state")).to_have_attribute("data-state", "succeeded", timeout=30_000)
    expect(node(page, "publish")).to_have_attribute("data-state", "succeeded")
    expect(node(page, "flaky")).to_have_attribute("data-state", "succeeded")
    run = ui_server.admin.get(f"/runs/{run_id}").json()
    attempts = {t["task_id"]: [a["state"] for a in t["attempts"]] for t in run["tasks"]}
    assert attempts["prepare"] == ["succeeded"]  # upstream of the retried task: not run again
    assert attempts["flaky"][0] == "failed" and attempts["flaky"][-1] == "succeeded"
    audit = ui_server.admin.get("/audit", params={"limit": 50}).json()["items"]
    assert any(
        a["path"] == f"/runs/{run_id}/tasks/flaky/retry" and a["status"] == 202 and a["actor_kind"] == "api_key"
        for a in audit
    ), audit


def test_a_running_run_can_be_cancelled_from_its_page(page: Any, ui_server: UiServer) -> None:
    ui_server.tasks.gate.clear()
    try:
        run_id = _trigger_waiting(ui_server)
        sign_in(page, ui_server, ui_server.operator_key)
        page.goto(f"{ui_server.url}/ui/#/runs/{run_id}")
        expect(node(page, "wait")).to_have_attribute("data-state", "running")
        page.get_by_role("button", name="Cancel run").click()
        expect(page.get_by_test_id("run-state")).to_have_attribute("data-state", "cancelled")
    finally:
        ui_server.tasks.gate.set()


def _trigger_waiting(server: UiServer) -> str:
    module = server.tasks.__name__
    text = (
        "apiVersion: udop/v1\nkind: Pipeline\nmetadata: {name: waiting}\n"
        f"spec:\n  tasks:\n    - {{id: wait, type: python, callable: '{module}:wait'}}\n"
    )
    r = server.admin.post("/pipelines", content=text, headers={"Content-Type": "application/yaml"})
    assert r.status_code in (200, 201), r.text
    return server.trigger("waiting")


def test_a_viewer_sees_no_trigger_cancel_resume_or_retry(page: Any, ui_server: UiServer) -> None:
    ui_server.tasks.fail["on"] = True
    run_id = ui_server.trigger("flaky")
    ui_server.wait_for(run_id, {"failed"})
    sign_in(page, ui_server, ui_server.token("viewer", sub="vera"))
    expect(page.get_by_test_id("who")).to_contain_text("(viewer)")
    page.goto(f"{ui_server.url}/ui/#/runs/{run_id}")
    expect(node(page, "flaky")).to_have_attribute("data-state", "failed")
    expect(page.get_by_role("button", name="Resume run")).to_have_count(0)
    expect(page.get_by_role("button", name="Cancel run")).to_have_count(0)
    node(page, "flaky").click()
    expect(page.get_by_test_id("task-panel")).to_contain_text("told to fail by the test")
    expect(page.get_by_role("button", name="Retry from here")).to_have_count(0)
    page.goto(f"{ui_server.url}/ui/#/pipelines/shop")
    expect(page.get_by_role("heading", name="Pipeline shop")).to_be_visible()
    expect(page.get_by_test_id("trigger")).to_have_count(0)
    shot(page, "run-viewer")


PAGES = ["#/pipelines", "#/pipelines/shop", "#/runs", "#/lineage"]


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_main_pages_have_no_serious_accessibility_violation(
    browser: Any, ui_server: UiServer, scheme: str
) -> None:
    axe = UI_DIR / "node_modules" / "axe-core" / "axe.min.js"
    if not axe.exists():
        pytest.skip(
            f"ACCESSIBILITY CHECK SKIPPED: {axe} is missing; run `npm ci --prefix ui` (bootstrap does)"
        )
    source = axe.read_text()
    # bypass_csp: axe is injected by the test; the page's own policy forbids inline scripts
    context = browser.new_context(
        color_scheme=scheme, bypass_csp=True, viewport={"width": 1280, "height": 900}
    )
    page = context.new_page()
    try:
        run_id = ui_server.trigger("shop")
        ui_server.wait_for(run_id, {"succeeded"})
        page.goto(ui_server.url + "/ui/")
        found = _axe(page, source)
        sign_in(page, ui_server, ui_server.token("operator"))
        for hash_ in [*PAGES, f"#/runs/{run_id}?task=check"]:
            page.goto(f"{ui_server.url}/ui/{hash_}")
            page.wait_for_load_state("networkidle")
            expect(page.get_by_text("Loading…")).to_have_count(0)
            found += [f"{hash_}: {v}" for v in _axe(page, source)]
        shot(page, f"run-{scheme}")
    finally:
        context.close()
    assert not found, "\n".join(found)


def _axe(page: Any, source: str) -> list[str]:
    page.evaluate(source)
    result = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes'][:3]]}"
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]
