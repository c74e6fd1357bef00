"""What an admin sees of a Dendro job in the Prefect UI, in a real browser: Debian's headless Chromium
driven by Playwright (Playwright's own browser download is not used). One letter_count job runs to
completion on the local pool; then its flow run's page must show the run's name, its tags, the job's
log and its job card (the worker's markdown artifact), and the local work pool's edit page its job
variables as a form. Screenshots go to the test output directory (`test_output_dir`)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Page, expect, sync_playwright

from tests.conftest import create_letter_count_job
from tests.stack import final_flow_run, finished_job, wait_for_log

CHROMIUM = "/usr/bin/chromium"  # Debian's chromium (scripts/test.sh installs it)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 20_000
APP_LINE = "letter_count: 'o' appears 3 times in 18 characters"


@pytest.fixture(scope="module")
def job_run(controller):
    """A letter_count job run to completion on the local pool: its id and its final flow run."""
    job_id = create_letter_count_job(controller.admin, controller.resource_id, text="hello dendro world", letter="o")
    job = finished_job(controller.admin, job_id)
    assert job["status"] == "completed", job.get("error")
    flow_run = final_flow_run(job_id)
    assert flow_run.state.is_completed()
    wait_for_log(flow_run.id, f"Job {job_id} launched as", APP_LINE)
    return job_id, flow_run


@pytest.fixture(scope="module")
def page(job_run, prefect_stack, tmp_path_factory):
    """A page of a fresh headless Chromium (new empty profile) whose base URL is the test server's UI.
    It starts after `job_run` on purpose: Playwright's sync API leaves its event loop marked running in
    this thread while it is open, and tests.stack's `asyncio.run` refuses to run under it."""
    ui_url = prefect_stack.api_url.removesuffix("/api")
    # The UI calls the API its settings name: this server's (embedded.prefect_server), not Prefect's default.
    assert requests.get(f"{ui_url}/ui-settings", timeout=10).json()["api_url"] == prefect_stack.api_url
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_ARGS, base_url=ui_url, viewport={"width": 1440, "height": 2000})
        try:
            context.set_default_timeout(TIMEOUT_MS)
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def screenshot(page: Page, directory: Path, name: str) -> Path:
    """The viewport (the UI scrolls inside its own panes, so a full-page shot adds nothing)."""
    path = directory / f"prefect-ui-{name}.png"
    page.screenshot(path=str(path))
    print(f"screenshot: {path}")
    return path


def shown_after_a_reload_at_most(page: Page, locator) -> None:
    """The UI reads each pane's data once, and a read that failed (on the loaded suite the API sometimes times out:
    the UI's "Something went wrong" toast, "Waiting for logs...") is not tried again: the page is reloaded once."""
    try:
        expect(locator).to_be_visible()
    except AssertionError:
        page.reload()
        expect(locator).to_be_visible()


def test_flow_run_page_shows_the_job_its_log_and_its_job_card(page, job_run, test_output_dir):
    job_id, flow_run = job_run
    page.goto(f"/runs/flow-run/{flow_run.id}")
    header = page.get_by_role("banner")
    assert flow_run.name == f"letter_count/letter_count {job_id}"
    expect(header.get_by_text(flow_run.name, exact=True)).to_be_visible()
    for tag in ("app:letter_count", "processor:letter_count", f"job:{job_id}"):
        expect(header.get_by_text(tag, exact=True)).to_be_visible()
    shown_after_a_reload_at_most(page, page.get_by_text(f"Job {job_id} launched as process:"))  # Logs open first
    expect(page.get_by_text(APP_LINE)).to_be_visible()
    screenshot(page, test_output_dir, "flow-run")

    # The job card: listed under the run's Artifacts by its description, rendered as markdown on its own page.
    page.get_by_role("tablist").get_by_text("Artifacts", exact=True).click()
    page.get_by_role("link").filter(has_text=f"Dendro job {job_id}").click()
    expect(page.get_by_role("heading", name=f"Dendro job {job_id}", level=1)).to_be_visible()
    project_id = job_id.split(".")[0]
    expect(page.get_by_role("link", name=f"Project {project_id} in Dendro")).to_have_attribute(
        "href", re.compile(rf"/project/{re.escape(project_id)}$"))
    expect(page.get_by_role("row", name="Processor letter_count")).to_be_visible()
    screenshot(page, test_output_dir, "job-card")


def test_work_pool_pages_show_the_job_variables_as_a_form(page, controller, job_run, test_output_dir):
    page.goto(f"/work-pools/work-pool/{controller.pool}")
    expect(page.get_by_role("banner")).to_contain_text(controller.pool)
    expect(page.get_by_role("link", name=job_run[1].name)).to_be_visible()  # the pool's runs, newest first
    expect(page.get_by_text("Dendro Local", exact=True)).to_be_visible()  # the pool's type, dendro-local
    expect(page.get_by_role("heading", name="Base Job Configuration")).to_be_visible()
    screenshot(page, test_output_dir, "work-pool")

    page.goto(f"/work-pools/work-pool/{controller.pool}/edit")
    expect(page.get_by_role("heading", name="Base Job Template")).to_be_visible()
    for description in ("CPUs (requiredResources.numCpus of the job).",
                        "Memory in GB (requiredResources.memoryGb of the job).",
                        "Directory that holds one working directory per job."):
        expect(page.get_by_text(description, exact=True)).to_be_visible()
    # Each variable's description followed by its input holding the default (DendroVariables).
    expect(page.get_by_role("tabpanel", name="Defaults")).to_match_aria_snapshot(
        '- article: CPUs (requiredResources.numCpus of the job).\n- spinbutton: "1"\n'
        '- article: Directory that holds one working directory per job.\n- textbox: dendro-jobs')
    page.get_by_text("CPUs (requiredResources.numCpus of the job).", exact=True).scroll_into_view_if_needed()
    screenshot(page, test_output_dir, "work-pool-edit")
