"""What the browser tests share: trusting the cluster's CA, logging in, waiting for a view to
settle, the translation check, the phone-width check and screenshots."""

import base64
import hashlib
import re
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from playwright.sync_api import Browser, Page, Playwright, expect

# Debian's chromium: no browser is downloaded (install-deps installs it).
CHROMIUM = Path("/usr/bin/chromium")


def trusting(ca_file: Path) -> list[str]:
    """Chromium's options to trust the devcluster's CA. Chromium reads CAs from an NSS database
    only; instead it is told to accept a chain that holds this public key (the CA's, which
    every node serves after its own certificate), so the pages run over real HTTPS and a
    certificate from any other CA is still refused."""
    ca = x509.load_pem_x509_certificate(ca_file.read_bytes())
    spki = ca.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pin = base64.b64encode(hashlib.sha256(spki).digest()).decode()
    return [f"--ignore-certificate-errors-spki-list={pin}"]


def launch(playwright: Playwright, ca_file: Path) -> Browser:
    """Chromium trusting the CA in `ca_file`. --no-sandbox: the tests run as root, where
    chromium refuses its sandbox."""
    return playwright.chromium.launch(
        executable_path=str(CHROMIUM),
        headless=True,
        args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", *trusting(ca_file)],
    )


BOOT = 240_000  # ms: the guest boots under TCG on these hosts
STEP = 30_000  # ms: anything the cluster does quickly (tasks, live updates)

# What the page shows that no dictionary produced, in one language or the other.
UNTRANSLATED = """(language) => {
  const i18n = window.__heronI18n;
  const other = language === "ru" ? i18n.en : i18n.ru;
  const mine = language === "ru" ? i18n.ru : i18n.en;
  const foreign = new Set(
    Object.keys(other).filter((k) => other[k] !== mine[k]).map((k) => other[k]));
  const texts = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const text = walker.currentNode.textContent.trim();
    if (text) texts.push(text);
  }
  for (const el of document.querySelectorAll("[placeholder],[aria-label],[title]")) {
    for (const name of ["placeholder", "aria-label", "title"]) {
      const value = el.getAttribute(name);
      if (value) texts.push(value.trim());
    }
  }
  return {
    missing: [...i18n.missing],
    raw: texts.filter((t) => t.includes("\u27e6")),
    foreign: texts.filter((t) => foreign.has(t)),
    onlyEn: Object.keys(i18n.en).filter((k) => !(k in i18n.ru)),
    onlyRu: Object.keys(i18n.ru).filter((k) => !(k in i18n.en)),
    empty: Object.keys(mine).filter((k) => !mine[k].trim()),
  };
}"""


def shot(page: Page, screenshots: Path, name: str) -> None:
    page.screenshot(path=str(screenshots / f"{name}.png"), full_page=True)


def log_in(page: Page, url: str, password: str, user: str = "admin") -> None:
    page.goto(url)
    expect(page).to_have_url(re.compile(r"/login"))
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.click("[data-testid=login-submit]")
    expect(page.locator("[data-testid=logout]")).to_be_visible()


def settle(page: Page) -> None:
    """Wait until the view has loaded what it shows (no API request or load under way)."""
    page.wait_for_function("window.__heronBusy === 0")


def assert_translated(page: Page, language: str, where: str) -> None:
    found = page.evaluate(UNTRANSLATED, language)
    assert not found["onlyEn"] and not found["onlyRu"], f"dictionaries differ: {found}"
    assert not found["empty"], f"empty texts in {language}: {found['empty']}"
    assert not found["missing"], f"{where}: keys without a text: {found['missing']}"
    assert not found["raw"], f"{where}: untranslated keys shown: {found['raw']}"
    assert not found["foreign"], f"{where} in {language}: texts of the other language: {found}"


def assert_fits(page: Page, where: str) -> None:
    """Once the view has settled, nothing makes the page scroll sideways."""
    settle(page)
    wide = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert wide[0] <= wide[1], f"{where} scrolls sideways at {wide[1]} px: {wide}"


def open_tab(page: Page, ui: str, vm: dict[str, Any], tab: str) -> None:
    """A VM's page at one of its tabs, once it has drawn."""
    page.goto(f"{ui}/vms/{vm['id']}?tab={tab}")
    expect(page.locator("[data-testid=vm-state]")).to_be_visible()
    settle(page)
