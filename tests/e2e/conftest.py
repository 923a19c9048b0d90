"""Fixtures of the browser tests: Debian's chromium driven by Playwright, against a devcluster.

No browser is downloaded: Playwright drives /usr/bin/chromium, which install-deps installs.
"""

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from heron.api.web import DIST
from heron.devcluster import DevCluster

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).parent / "screenshots"

if not CHROMIUM.exists():
    pytest.skip(
        "Debian's chromium is not installed (/usr/bin/chromium); scripts/install-deps installs it",
        allow_module_level=True,
    )

from browsing import STEP, launch  # noqa: E402
from playwright.sync_api import (  # noqa: E402
    Browser,
    BrowserContext,
    Page,
    Playwright,
    expect,
    sync_playwright,
)

# What the cluster does takes its time under TCG on two cores (a task, a live update):
# expect() waits up to this long by default, as the pages' own actions do.
expect.set_options(timeout=STEP)


@pytest.fixture(scope="session")
def built_ui() -> Path:
    """The built UI; a test run without it would test nothing."""
    index = DIST / "index.html"
    assert index.is_file(), "the web UI is not built: run scripts/install-deps"
    return index


@pytest.fixture(scope="session")
def screenshots() -> Path:
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    SCREENSHOTS.mkdir(parents=True)
    return SCREENSHOTS


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright, cluster3: tuple[DevCluster, str]) -> Iterator[Browser]:
    # The pages are served over HTTPS by the devcluster, whose CA the browser trusts.
    browser = launch(playwright, cluster3[0].ca_file)
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def admin_password(cluster3: tuple[DevCluster, str]) -> str:
    cluster, _ = cluster3
    return cluster.password_file.read_text().strip()


@pytest.fixture(scope="module")
def ui(cluster3: tuple[DevCluster, str], built_ui: Path) -> str:
    """The UI as the first node serves it (VMs on other nodes: consoles are relayed)."""
    cluster, _ = cluster3
    return cluster.nodes[0].url


@pytest.fixture(scope="module")
def desktop(browser: Browser) -> Iterator[BrowserContext]:
    context = browser.new_context(viewport={"width": 1920, "height": 1080}, locale="en-US")
    context.set_default_timeout(STEP)
    yield context
    context.close()


@pytest.fixture
def phone(browser: Browser) -> Iterator[Page]:
    """A Russian phone, 375 px wide (the UI picks the browser's language by itself)."""
    context = browser.new_context(
        viewport={"width": 375, "height": 812}, locale="ru-RU", is_mobile=True, has_touch=True
    )
    context.set_default_timeout(STEP)
    yield context.new_page()
    context.close()
