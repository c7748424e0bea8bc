"""The web page in a real headless Chromium, against ``training-agent serve --local`` while a
real trainer trains the digits: the runs list, curves that gain a point as each epoch ends
(no reload), the confusion matrix with class names at the end, cancel behind a confirmation,
the token form, and a hostile project name shown as text.

One server and one browser serve the whole module; each test gets a fresh browser context
(a new tab with empty sessionStorage). A screenshot of each test's last view is saved under
``test-artifacts/web-page/`` at the repository root (ignored by git)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest

from tests.fixtures.digits import DigitsZip
from training_agent.localstack import start_local_stack
from training_core.settings import Settings
from training_core.store.postgres import PostgresStore

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "web-page"
CLI = str(Path(sys.executable).with_name("training-agent"))
HOSTILE_NAME = "<img src=x onerror=alert(1)>"
EPOCHS = 4
DIGITS = {"image_size": 16, "limit": 800}  # an epoch takes a few seconds on 2 CPU cores


@dataclass
class Served:
    home: Path
    url: str
    token: str
    store: PostgresStore

    @property
    def page(self) -> str:
        return f"{self.url}/ui/"

    def api(self, method: str, path: str, **options: Any) -> dict[str, Any]:
        answer = httpx.request(
            method, f"{self.url}{path}", headers={"Authorization": f"Bearer {self.token}"},
            timeout=30, **options,
        )  # fmt: skip
        answer.raise_for_status()
        return answer.json()

    def register(self, name: str, dataset: Path, epochs: int) -> str:
        """Play the platform: the archive in the bucket's raw/, a pending project, its dataset."""
        archive = self.home / "bucket" / "raw" / f"{time.monotonic_ns()}-{dataset.name}"
        archive.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(dataset, archive)
        project = self.store.create_project(
            name,
            metadata={
                "model": "resnet18", "epochs": epochs, "image_size": 16, "batch_size": 64,
                "num_classes": 10, "pretrained": False, "seed": 0,
            },
        )  # fmt: skip
        self.store.add_dataset(project.id, f"file://{archive}", name="digits", source="test")
        return str(project.id)

    def start(self, project_id: str) -> dict[str, Any]:
        return self.api("POST", "/agents/training/start", json={"project_id": project_id})

    def status(self, project_id: str) -> dict[str, Any]:
        return self.api("GET", f"/agents/training/status/{project_id}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """``training-agent serve --local`` on a free port, with a home of its own."""
    home = tmp_path_factory.mktemp("web") / "home"
    home.mkdir()
    port = _free_port()
    clean = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    env = {**clean, "TRAINING_AGENT_HOME": str(home)}
    log_path = home.parent / "api.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [CLI, "serve", "--local", "--port", str(port)], env=env, cwd=home.parent,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert process.poll() is None, log_path.read_text()
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        return False

    try:
        _wait_until(healthy, 90, "the API answers")
        assert f"Watch runs at {url}/ui/" in log_path.read_text()
        stack = start_local_stack(home)  # the server's database, reused
        store = PostgresStore(stack.database_url)
        try:
            yield Served(home, url, stack.api_token, store)
        finally:
            store.close()
            stack.stop()  # not ours: leaves the server's database running
    finally:
        process.terminate()
        process.wait(timeout=60)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(executable).exists():
        pytest.fail("Chromium is missing: `make browser` installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable)
        yield chromium
        chromium.close()


@dataclass
class Tab:
    """A page with what it saw: dialogs, script errors, console errors, requests made."""

    page: Any
    dialogs: list[tuple[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    requests: list[Any] = field(default_factory=list)
    answer_dialogs: bool = True

    def sign_in(self, served: Served, token: str | None = None) -> None:
        self.page.goto(served.page)
        self.page.fill("#token-input", token or served.token)
        self.page.click("#token-form button[type=submit]")

    def api_requests(self) -> list[Any]:
        return [r for r in self.requests if "/agents/" in r.url]


def _console_error(message: Any, errors: list[str]) -> None:
    """A CSP violation or a script error; a refused request (a wrong token's 401) is not one."""
    if message.type == "error" and "Failed to load resource" not in message.text:
        errors.append(message.text)


@pytest.fixture
def tab(browser: Any, request: pytest.FixtureRequest) -> Iterator[Tab]:
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    seen = Tab(context.new_page())

    def on_dialog(dialog: Any) -> None:
        seen.dialogs.append((dialog.type, dialog.message))
        dialog.accept() if seen.answer_dialogs else dialog.dismiss()

    seen.page.on("dialog", on_dialog)
    seen.page.on("pageerror", lambda error: seen.errors.append(str(error)))
    seen.page.on("console", lambda message: _console_error(message, seen.errors))
    seen.page.on("request", lambda sent: seen.requests.append(sent))
    try:
        yield seen
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(Exception):
            seen.page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
        context.close()
    assert seen.errors == [], seen.errors


def points(tab: Tab, series: str = "loss") -> int:
    return tab.page.locator(f"#loss-chart circle.point[data-series={series}]").count()


@pytest.mark.timeout(600)  # a busy machine trains slower; the curve's growth is what counts
def test_a_training_run_grows_its_curves_and_ends_with_its_confusion_matrix(
    served: Served, tab: Tab, digits_zip: DigitsZip
) -> None:
    project_id = served.register("digits-web", digits_zip(**DIGITS), EPOCHS)
    run = served.start(project_id)
    tab.sign_in(served)

    row = tab.page.locator(f"#runs-body tr[data-run-id='{run['run_id']}']")
    row.wait_for()
    assert row.locator("a.project").inner_text() == "digits-web"
    assert row.locator("td").nth(1).inner_text() == "resnet18"
    row.locator("a.project").click()
    tab.page.wait_for_function(f"location.hash === '#/projects/{project_id}'")

    seen: list[int] = []  # plotted points over time, the page never reloaded
    phase = tab.page.locator("#run-phase")

    def finished() -> bool:
        seen.append(points(tab))
        return phase.inner_text() in ("Succeeded", "Failed", "Cancelled")

    _wait_until(finished, 540, "the run ends", every=0.25)
    assert phase.inner_text() == "Succeeded", served.status(project_id)
    tab.page.locator("#confusion-matrix td").first.wait_for()  # the last poll's metrics

    counts = [count for n, count in enumerate(seen) if n == 0 or count != seen[n - 1]]
    assert counts == sorted(counts) and counts[-1] == EPOCHS, counts
    assert any(0 < count < EPOCHS for count in counts), counts  # seen mid-way, then more
    assert points(tab, "val_loss") == EPOCHS
    assert tab.page.locator("#accuracy-chart circle.point").count() == EPOCHS
    assert len(served.status(project_id)["history"]) == EPOCHS

    matrix = tab.page.locator("#confusion-matrix")
    columns = matrix.locator("thead th.class-name").all_inner_texts()
    rows = matrix.locator("tbody th.class-name").all_inner_texts()
    assert columns == rows == [str(digit) for digit in range(10)]
    cells = [int(text) for text in matrix.locator("tbody td").all_inner_texts()]
    assert len(cells) == 100 and sum(cells) > 0
    facts = tab.page.locator("#run-facts").inner_text()
    assert run["model_url"] in facts
    assert run["model_url"].removesuffix(".pth") + ".metrics.json" in facts
    assert f"Epoch {EPOCHS}/{EPOCHS} completed" in tab.page.locator("#run-logs").inner_text()
    assert tab.page.locator("#cancel-run").is_hidden()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    tab.page.screenshot(path=str(ARTIFACTS / "run-succeeded.png"), full_page=True)

    tab.page.click("a[href='#/']")  # back to the list: the run's row says it ended
    row.locator(".phase", has_text="Succeeded").wait_for()
    assert row.locator("td").nth(3).inner_text().endswith(f"{EPOCHS}/{EPOCHS}")


def test_cancel_asks_first_and_then_stops_the_run(
    served: Served, tab: Tab, digits_zip: DigitsZip
) -> None:
    project_id = served.register("digits-to-cancel", digits_zip(**DIGITS), 50)
    run = served.start(project_id)
    tab.sign_in(served)
    tab.page.goto(f"{served.page}#/projects/{project_id}")
    phase = tab.page.locator("#run-phase")
    _wait_until(lambda: phase.inner_text() == "Running", 180, "the run trains")
    cancel = tab.page.locator("#cancel-run")

    tab.answer_dialogs = False  # "no": nothing happens
    cancel.click()
    _wait_until(lambda: tab.dialogs, 10, "the question")
    assert not [r for r in tab.api_requests() if r.method == "POST"]
    assert served.status(project_id)["status"] == "running"

    tab.answer_dialogs = True
    cancel.click()
    _wait_until(lambda: phase.inner_text() == "Cancelled", 30, "the page shows the cancel")

    assert [kind for kind, _ in tab.dialogs] == ["confirm", "confirm"]
    assert run["run_name"] in tab.dialogs[0][1] and "digits-to-cancel" in tab.dialogs[0][1]
    posts = [r for r in tab.api_requests() if r.method == "POST"]
    assert [r.url for r in posts] == [f"{served.url}/agents/training/cancel/{project_id}"]
    status = served.status(project_id)
    assert status["status"] == "cancelled" and status["project_status"] == "pending_training"
    assert cancel.is_hidden()


def test_without_a_token_the_page_shows_only_the_token_form(served: Served, tab: Tab) -> None:
    tab.page.goto(served.page)
    form = tab.page.locator("#token-form")
    form.wait_for()

    assert tab.page.locator("#runs-view").is_hidden() and tab.page.locator("#run-view").is_hidden()
    assert tab.page.locator("#nav").is_hidden()
    assert tab.api_requests() == []  # nothing asked for, nothing shown

    tab.page.goto(f"{served.page}#/projects/{UUID(int=1)}")  # a deep link asks first too
    assert form.is_visible() and tab.api_requests() == []

    tab.sign_in(served, token="not-the-token")
    error = tab.page.locator("#token-error")
    error.wait_for()
    assert "not accepted" in error.inner_text() and form.is_visible()
    assert tab.page.locator("#runs-body tr").count() == 0
    assert tab.page.evaluate("sessionStorage.length") == 0  # a refused token is not kept

    tab.sign_in(served)
    tab.page.locator("#runs-view").wait_for()
    tab.page.reload()  # the tab keeps its token
    tab.page.locator("#runs-view").wait_for()
    assert form.is_hidden()
    for sent in tab.api_requests():
        assert served.token not in sent.url and "token" not in sent.url
        assert sent.headers["authorization"] in (f"Bearer {served.token}", "Bearer not-the-token")

    tab.page.click("#forget-token")
    form.wait_for()
    assert tab.page.evaluate("sessionStorage.length") == 0
    assert tab.page.locator("#runs-body tr").count() == 0


def test_a_hostile_project_name_is_shown_as_text(
    served: Served, tab: Tab, digits_zip: DigitsZip
) -> None:
    project_id = served.register(HOSTILE_NAME, digits_zip(**DIGITS), 50)
    served.start(project_id)
    served.api("POST", f"/agents/training/cancel/{project_id}")
    tab.sign_in(served)

    link = tab.page.locator("#runs-body a.project", has_text=HOSTILE_NAME)
    link.wait_for()
    assert link.inner_text() == HOSTILE_NAME
    link.click()
    title = tab.page.locator("#run-project")
    _wait_until(lambda: title.inner_text() == HOSTILE_NAME, 10, "the run's page")
    tab.page.locator("#run-phase", has_text="Cancelled").wait_for()
    time.sleep(0.5)  # an image that failed to load would have fired its onerror by now

    assert tab.page.get_by_role("heading", name=HOSTILE_NAME, exact=True).is_visible()
    assert tab.page.locator("img").count() == 0
    assert tab.dialogs == []
    assert tab.page.title().startswith(HOSTILE_NAME)
