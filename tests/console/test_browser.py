"""The console in a real browser (Debian's chromium, driven by Selenium headless)
against a real farm: `qrfarm api` with the console, a worker, the scheduler and
the storage SCP, with Orthanc and two sandbox PACS:

* ``orthanc``: moves that complete;
* ``slow``: the sandbox sending one instance each 50 ms, where a C-CANCEL is
  counted (Orthanc ignores C-CANCEL);
* ``late``: the sandbox answering each C-MOVE at once while its C-STOREs go
  nowhere, so that its moves end partial (nothing of what the find named arrives).

One farm and one browser for the module. Screenshots of each page are written
to ``console-screenshots`` under the module's temporary folder, at 1280 px
and at a tablet's 768 px.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from qrfarm.dicom import Level
from qrfarm.jobs.nodes import NodeSpec
from qrfarm.sandbox.pacs import Behaviour, SandboxPacs
from qrfarm.sandbox.synthetic import Corpus
from tests.api.conftest import start_api
from tests.conftest import QRFARM_SCP_AE
from tests.farm.conftest import Farm, make_farm
from tests.peers import require_peer
from tests.peers.orthanc import OrthancPeer
from tests.peers.ports import free_port

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ENDED = {"completed", "partial", "failed", "cancelled"}


@dataclass
class ConsoleFarm:
    farm: Farm
    url: str
    admin: str
    reader: str
    slow: SandboxPacs
    screenshots: Path
    partial_jobs: list[int]


@pytest.fixture(scope="module")
def console_farm(
    tmp_path_factory: pytest.TempPathFactory,
    qrfarm_scp_port: int,
    orthanc: OrthancPeer,
    corpus: Corpus,
) -> Iterator[ConsoleFarm]:
    root = tmp_path_factory.mktemp("console-farm")
    files = [i.path for i in corpus.instances]
    slow = SandboxPacs(
        files,
        destinations={QRFARM_SCP_AE: ("127.0.0.1", qrfarm_scp_port)},
        behaviour=Behaviour(retrieve_delay_s=0.05),
    )
    # Its C-STOREs go to a port nothing listens on: every move of it ends partial.
    late = SandboxPacs(
        files,
        ae_title="LATEPACS",
        destinations={QRFARM_SCP_AE: ("127.0.0.1", free_port())},
        behaviour=Behaviour(store_after_answer_s=0.2),
    )
    slow_port, late_port = slow.start(), late.start()
    try:
        with make_farm("embedded", root, qrfarm_scp_port) as farm:
            farm.env["QRFARM_RETRY_PARTIAL"] = "false"
            farm.register(NodeSpec("orthanc", orthanc.ae_title, "127.0.0.1", orthanc.port))
            farm.register(NodeSpec("slow", "SANDBOX", "127.0.0.1", slow_port, 2))
            farm.register(NodeSpec("late", "LATEPACS", "127.0.0.1", late_port, 2))
            farm.start_scp()
            farm.start("scheduler", "scheduler")
            farm.start_worker(concurrency=2)
            api = start_api(farm)
            admin = api.issue("console-operator", ("read", "submit", "admin"))
            reader = api.issue("console-watcher", ("read",))
            study = _small_study(corpus)
            partial = [
                farm.client.move("late", Level.STUDY, {"StudyInstanceUID": study}) for _ in range(2)
            ]
            for job_id in partial:
                assert farm.wait(job_id, timeout=90)["state"] == "partial"
            shots = root / "console-screenshots"
            shots.mkdir()
            yield ConsoleFarm(farm, api.url, admin, reader, slow, shots, partial)
    finally:
        slow.stop()
        late.stop()


def _small_study(corpus: Corpus) -> str:
    return next(
        s for s, i in corpus.studies().items() if s != corpus.large_study_uid and len(i) <= 20
    )


@pytest.fixture(scope="module")
def browser(console_farm: ConsoleFarm) -> Iterator[Any]:
    require_peer(CHROMIUM)
    require_peer(CHROMEDRIVER)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        "--no-proxy-server",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(condition: Callable[[], Any], timeout: float = 60, what: str = "") -> Any:
    from selenium.common.exceptions import WebDriverException

    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except (IndexError, WebDriverException):  # the page is being loaded (again)
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.2)


def css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, selector))


def sign_in(driver: Any, farm: ConsoleFarm, token: str) -> None:
    driver.delete_all_cookies()
    driver.get(f"{farm.url}/console/jobs")
    assert "/console/login" in driver.current_url
    css(driver, "#token")[0].send_keys(token)
    css(driver, "form button[type=submit]")[0].click()
    wait_for(lambda: driver.current_url.startswith(f"{farm.url}/console/jobs"), 20, "the jobs page")


def shoot(driver: Any, farm: ConsoleFarm, name: str) -> None:
    """The page at 1280 px, then as a tablet shows it (768 px wide)."""
    for width, height, suffix in ((1280, 900, ""), (768, 1024, "-tablet")):
        driver.set_window_size(width, height)
        driver.save_screenshot(str(farm.screenshots / f"{name}{suffix}.png"))
    driver.set_window_size(1280, 900)


def flash_text(driver: Any) -> str:
    return " ".join(e.text for e in css(driver, ".flash"))


def unlabelled_controls(driver: Any) -> list[str]:
    """Form controls a screen reader could not name (no label, no aria-label)."""
    return list(
        driver.execute_script(
            """
            return Array.from(document.querySelectorAll("input, select, textarea"))
              .filter(e => e.type !== "hidden")
              .filter(e => !(e.labels && e.labels.length) && !e.getAttribute("aria-label"))
              .map(e => e.outerHTML.slice(0, 120));
            """
        )
    )


def post_from_page(driver: Any, path: str, fields: dict[str, str]) -> int:
    """A POST sent by script from the signed-in page (the cookie goes with it); its status."""
    return int(
        driver.execute_async_script(
            """
            const done = arguments[arguments.length - 1];
            fetch(arguments[0], {method: "POST", credentials: "same-origin",
                                 body: new URLSearchParams(arguments[1]), redirect: "manual"})
              .then(r => done(r.status)).catch(() => done(-1));
            """,
            path,
            fields,
        )
    )


def test_sign_in_submit_a_move_and_watch_it_complete_without_reloading(
    browser: Any, console_farm: ConsoleFarm, corpus: Corpus
) -> None:
    from selenium.webdriver.support.ui import Select

    farm = console_farm
    sign_in(browser, farm, farm.admin)
    shoot(browser, farm, "jobs-before")
    summary = css(browser, "details summary")[0]
    summary.click()
    Select(css(browser, "#s-kind")[0]).select_by_value("move")
    Select(css(browser, "#s-node")[0]).select_by_visible_text("orthanc")
    Select(css(browser, "#s-level")[0]).select_by_visible_text("STUDY")
    css(browser, "#s-keys")[0].send_keys(f"StudyInstanceUID={corpus.large_study_uid}")
    css(browser, "details form button[type=submit]")[0].click()
    try:
        message = wait_for(lambda: "queued" in flash_text(browser) and flash_text(browser), 20)
    except AssertionError:
        print(browser.current_url, browser.page_source[:4000])
        raise
    job_id = int(message.split()[1])
    # A mark on the page: gone if the page were loaded again.
    browser.execute_script("window.consoleMark = 'still here';")
    row = f'tr[data-job="{job_id}"]'
    states = set()

    def reached_completed() -> bool:
        state = css(browser, f"{row} [data-field=state]")[0].text
        states.add(state)
        return bool(state == "completed")

    wait_for(reached_completed, 120, f"job {job_id} shown completed")
    assert browser.execute_script("return window.consoleMark") == "still here"
    # Seen while it ran, not only at the end: the page followed it.
    assert states & {"queued", "running", "reconciling"}, states
    assert css(browser, f"{row} [data-field=recorded]")[0].text == str(
        len(corpus.studies()[corpus.large_study_uid])
    )
    shoot(browser, farm, "jobs-completed")

    # The job's page: every response of every attempt, as the database holds them.
    css(browser, f'{row} a[href="/console/jobs/{job_id}"]')[0].click()
    wait_for(lambda: css(browser, "#job-state"), 20)
    held = farm.farm.client.status(job_id, responses=True)["attempts"]
    shown = css(browser, "table.responses tr.response")
    assert len(shown) == sum(len(a["responses"]) for a in held) > 1
    cells = [c.text for c in css(shown[-1], "td")]
    assert cells[1] == "0x0000" and cells[2].startswith("success")
    assert css(browser, "#job-state")[0].text == "completed"
    assert css(browser, "#trace-id")[0].text
    shoot(browser, farm, "job")


def test_cancel_a_running_move_reaches_the_pacs(
    browser: Any, console_farm: ConsoleFarm, corpus: Corpus
) -> None:
    farm = console_farm
    sign_in(browser, farm, farm.admin)
    job_id = farm.farm.client.move(
        "slow", Level.STUDY, {"StudyInstanceUID": corpus.large_study_uid}
    )
    browser.get(f"{farm.url}/console/jobs/{job_id}")
    wait_for(lambda: int(css(browser, "#job-recorded")[0].text or 0) >= 5, 60, "instances arriving")
    assert css(browser, "#job-state")[0].text == "running"
    css(browser, "#cancel")[0].click()
    wait_for(lambda: "cancel asked for" in flash_text(browser), 20)
    wait_for(lambda: css(browser, "#job-state")[0].text == "cancelled", 60, "the job cancelled")
    assert farm.slow.behaviour.stats.cancels == 1  # C-CANCEL seen at the PACS
    # The page loads itself once the job ended: its last response is the PACS's cancel.
    wait_for(
        lambda: css(browser, "table.responses tr.response")[-1].text.split()[1] == "0xFE00",
        20,
        "the cancel response shown",
    )
    summary = farm.farm.client.status(job_id)
    assert 5 <= summary["recorded"] < len(corpus.studies()[corpus.large_study_uid])
    shoot(browser, farm, "job-cancelled")


def test_bulk_retry_of_the_partial_jobs_of_one_node(
    browser: Any, console_farm: ConsoleFarm
) -> None:
    from selenium.webdriver.support.ui import Select

    farm = console_farm
    client = farm.farm.client
    before = {j["id"]: j for j in client.jobs(limit=100)}
    sign_in(browser, farm, farm.admin)
    browser.get(f"{farm.url}/console/jobs?node=late&state=partial")
    listed = {int(e.get_attribute("data-job")) for e in css(browser, "tr[data-job]")}
    assert listed == set(farm.partial_jobs)
    shoot(browser, farm, "jobs-partial-filter")
    Select(css(browser, "#b-action")[0]).select_by_value("retry")
    css(browser, "input[name=target][value=filter]")[0].click()
    css(browser, "#bulk-apply")[0].click()
    wait_for(lambda: "retry: 2 job(s) done" in flash_text(browser), 20, "the bulk retry's message")
    for job_id in farm.partial_jobs:
        after = client.wait(job_id, timeout=90)
        assert after["attempt_count"] == before[job_id]["attempt_count"] + 1, after
    # Nothing else was touched.
    for job in client.jobs(limit=100):
        if job["id"] not in farm.partial_jobs and job["id"] in before:
            assert job["attempt_count"] == before[job["id"]]["attempt_count"], job


def test_echo_a_node(browser: Any, console_farm: ConsoleFarm) -> None:
    farm = console_farm
    sign_in(browser, farm, farm.admin)
    browser.get(f"{farm.url}/console/nodes/orthanc")
    css(browser, "#echo")[0].click()
    wait_for(lambda: "Echo orthanc: success" in flash_text(browser), 20, "the echo's answer")
    shoot(browser, farm, "node")


def test_a_read_token_sees_no_action_and_its_posts_are_refused(
    browser: Any, console_farm: ConsoleFarm
) -> None:
    farm = console_farm
    job_id = farm.partial_jobs[0]
    sign_in(browser, farm, farm.reader)
    for path in (
        "/console/jobs",
        f"/console/jobs/{job_id}",
        "/console/nodes",
        "/console/nodes/late",
        "/console/orphans",
        "/console/prefetch",
    ):
        browser.get(farm.url + path)
        assert not css(
            browser,
            "#cancel, #retry, #bulk, #bulk-apply, details form, #n-ae",
        ), path
        assert not css(browser, "input[name=job_id]"), path
    browser.get(f"{farm.url}/console/jobs/{job_id}")
    csrf = css(browser, "input[name=csrf]")[0].get_attribute("value")
    state = farm.farm.client.status(job_id)["state"]
    attempts = farm.farm.client.status(job_id)["attempt_count"]
    assert post_from_page(browser, f"/console/jobs/{job_id}/retry", {"csrf": csrf}) == 403
    assert (
        post_from_page(
            browser, "/console/jobs/bulk", {"csrf": csrf, "action": "cancel", "target": "filter"}
        )
        == 403
    )
    assert farm.farm.client.status(job_id)["state"] == state
    # Signed in with every scope, a POST without the CSRF token is refused all the same.
    sign_in(browser, farm, farm.admin)
    assert post_from_page(browser, f"/console/jobs/{job_id}/retry", {}) == 403
    assert farm.farm.client.status(job_id)["attempt_count"] == attempts


def test_screenshots_of_every_page(browser: Any, console_farm: ConsoleFarm) -> None:
    farm = console_farm
    sign_in(browser, farm, farm.admin)
    for name, path in (
        ("overview", "/console/"),
        ("nodes", "/console/nodes"),
        ("prefetch", "/console/prefetch"),
        ("orphans", "/console/orphans"),
        ("jobs", "/console/jobs"),
    ):
        browser.get(farm.url + path)
        wait_for(lambda: css(browser, "h1"), 20)
        assert not css(browser, ".error"), name
        assert unlabelled_controls(browser) == [], name
        shoot(browser, farm, name)
    # From the keyboard: the first Tab reaches the link past the navigation.
    from selenium.webdriver.common.keys import Keys

    browser.get(farm.url + "/console/")
    css(browser, "body")[0].send_keys(Keys.TAB)
    assert browser.switch_to.active_element.get_attribute("class") == "skip"
    names = {p.name for p in farm.screenshots.glob("*.png")}
    assert {
        "overview.png",
        "jobs.png",
        "job.png",
        "nodes.png",
        "node.png",
        "prefetch.png",
        "orphans.png",
        "overview-tablet.png",
    } <= names
    print(f"console screenshots: {farm.screenshots}")
