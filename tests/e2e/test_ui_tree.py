"""The resource tree and the VM list's actions in a real browser, against a 3-node devcluster.

Two VMs (one per node, from the test guest image, one of them in a group) are made through the
API; the tree shows them under their nodes, their volumes under their pool and the group's
member under the group; it narrows to a search, answers the keyboard, keeps what is expanded
and opens what is clicked. On the VM list both VMs are started and stopped at once, one is
paused and resumed from its row's menu, and a migration of stopped VMs is refused for each of
them with the API's reason. Both languages, and a phone's width.
"""

import re
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import Browser, BrowserContext, Locator, Page, Route, expect
from support import Api
from test_ui import BOOT, STEP, assert_translated, log_in, settle, shot

from heron.devcluster import DevCluster

pytestmark = pytest.mark.integration

GROUP = "tree-grp"


@pytest.fixture(scope="module")
def ui(cluster3: tuple[DevCluster, str], built_ui: Path) -> str:
    cluster, _ = cluster3
    return cluster.nodes[0].url


@pytest.fixture(scope="module")
def vms(api: Api, image: str, cluster3: tuple[DevCluster, str]) -> dict[str, dict[str, str]]:
    """tree-a on the second node (in the group), tree-b on the third; both switched off."""
    cluster, _ = cluster3
    api.ok("POST", "/groups", json={"name": GROUP, "placement": "none"})
    made: dict[str, dict[str, str]] = {}
    for name, node, extra in (
        ("tree-a", cluster.nodes[1].name, {"group": GROUP}),
        ("tree-b", cluster.nodes[2].name, {}),
    ):
        body = {
            "name": name,
            "memory_mib": 96,
            "node": node,
            "disks": [{"pool": image.split("/")[0], "source": image}],
            **extra,
        }
        reply = api.ok("POST", "/vms", json=body)
        api.wait_task(reply["task"])
        made[name] = {"id": reply["vm"], "node": node}
    return made


@pytest.fixture(scope="module")
def desktop(browser: Browser) -> Iterator[BrowserContext]:
    context = browser.new_context(viewport={"width": 1600, "height": 1000}, locale="en-US")
    context.set_default_timeout(STEP)
    yield context
    context.close()


@pytest.fixture(scope="module")
def page(desktop: BrowserContext, ui: str, admin_password: str) -> Page:
    page = desktop.new_page()
    log_in(page, ui, admin_password)
    return page


def item(scope: Page | Locator, kind: str, name: str, parent: str | None = None) -> Locator:
    """A row of the tree: its kind, its name and, if given, the key of the row above it."""
    where = f"[role=treeitem][data-kind={kind}][data-name='{name}']"
    if parent is not None:
        where += f"[data-parent='{parent}']"
    return scope.locator(where)


def expand(row: Locator) -> None:
    if row.get_attribute("aria-expanded") == "false":
        row.locator(".twisty").click()
    expect(row).to_have_attribute("aria-expanded", "true")


def test_the_tree_shows_nodes_vms_pools_volumes_and_groups(
    page: Page,
    ui: str,
    vms: dict[str, dict[str, str]],
    image: str,
    cluster3: tuple[DevCluster, str],
    screenshots: Path,
) -> None:
    cluster, _ = cluster3
    page.goto(f"{ui}/vms")
    tree = page.locator("[role=tree]")
    expect(tree).to_be_visible()  # open by default on a wide screen
    expect(page.locator("[data-testid=tree-toggle]")).to_have_attribute("aria-expanded", "true")
    expect(item(tree, "cluster", "tree.cluster")).to_have_attribute("aria-expanded", "true")
    for node in cluster.nodes:
        expect(item(tree, "node", node.name, "cluster")).to_be_visible()
    # Nodes start collapsed: their VMs are not rendered until asked for.
    expect(item(tree, "vm", "tree-a")).to_have_count(0)

    node_a = f"cluster/node:{vms['tree-a']['node']}"
    expand(item(tree, "node", vms["tree-a"]["node"]))
    vm_a = item(tree, "vm", "tree-a", node_a)
    expect(vm_a).to_be_visible()
    expect(vm_a).to_have_attribute("aria-level", "3")
    expect(vm_a.locator(".badge")).to_have_attribute("data-state", "shutoff")
    expect(item(tree, "vm", "tree-b", node_a)).to_have_count(0)  # on another node

    pool = image.split("/")[0]
    expand(item(tree, "pool", pool, "storage"))
    pool_key = f"storage/pool:{pool}"
    expect(item(tree, "volume", "testguest", pool_key)).to_be_visible()
    expect(item(tree, "volume", "tree-a-disk0", pool_key)).to_be_visible()
    expect(item(tree, "volume", "tree-b-disk0", pool_key)).to_be_visible()

    expand(item(tree, "group", GROUP, "groups"))
    expect(item(tree, "vm", "tree-a", f"groups/group:{GROUP}")).to_be_visible()
    expect(item(tree, "vm", "tree-b", f"groups/group:{GROUP}")).to_have_count(0)
    settle(page)
    shot(page, screenshots, "tree")

    # What is expanded outlives a reload (localStorage), and so does the panel being open.
    page.reload()
    expect(item(tree, "vm", "tree-a", node_a)).to_be_visible()
    expect(item(tree, "volume", "testguest", pool_key)).to_be_visible()


def test_a_vm_made_later_appears_live(page: Page, api: Api, vms: dict[str, dict[str, str]]) -> None:
    page.evaluate("window.__sameDocument = true")
    node = vms["tree-a"]["node"]
    reply = api.ok("POST", "/vms", json={"name": "tree-late", "memory_mib": 16, "node": node})
    late = item(page, "vm", "tree-late", f"cluster/node:{node}")
    expect(late).to_be_visible()
    assert page.evaluate("window.__sameDocument === true"), "the page was reloaded"
    api.wait_task(reply["task"])
    api.wait_task(api.ok("DELETE", f"/vms/{reply['vm']}")["task"])
    expect(late).to_have_count(0)


def test_search_narrows_the_tree_to_matches_and_their_ancestors(
    page: Page, vms: dict[str, dict[str, str]], cluster3: tuple[DevCluster, str], image: str
) -> None:
    cluster, _ = cluster3
    tree = page.locator("[role=tree]")
    search = page.locator("[data-testid=tree-search]")
    search.fill("tree-b")
    node_b = vms["tree-b"]["node"]
    expect(item(tree, "vm", "tree-b", f"cluster/node:{node_b}")).to_be_visible()
    expect(item(tree, "node", node_b)).to_have_attribute("aria-expanded", "true")
    # Its volume too, though that pool's volumes had not been read for the search.
    expect(item(tree, "volume", "tree-b-disk0")).to_be_visible()
    for node in cluster.nodes:
        if node.name != node_b:
            expect(item(tree, "node", node.name)).to_have_count(0)
    expect(item(tree, "vm", "tree-a")).to_have_count(0)
    expect(item(tree, "groups", "tree.groups")).to_have_count(0)  # nothing matches in there

    search.fill("no-such-thing")
    expect(tree.locator("[role=treeitem]")).to_have_count(0)
    expect(page.locator(".resource-tree")).to_contain_text("Nothing matches")
    search.fill("")
    expect(item(tree, "groups", "tree.groups")).to_be_visible()
    expect(item(tree, "vm", "tree-b")).to_have_count(0)  # its node was never expanded


def test_keyboard_moves_through_the_tree(
    page: Page, ui: str, vms: dict[str, dict[str, str]], cluster3: tuple[DevCluster, str]
) -> None:
    cluster, _ = cluster3
    tree = page.locator("[role=tree]")
    first_node = cluster.nodes[0].name
    root = item(tree, "cluster", "tree.cluster")
    page.locator("[data-testid=tree-search]").focus()
    page.keyboard.press("ArrowDown")
    expect(root).to_be_focused()
    expect(tree.locator("[role=treeitem][tabindex='0']")).to_have_count(1)  # roving tabindex
    page.keyboard.press("ArrowDown")
    node = item(tree, "node", first_node)
    expect(node).to_be_focused()
    expect(node).to_have_attribute("aria-expanded", "false")
    page.keyboard.press("ArrowRight")  # opens
    expect(node).to_have_attribute("aria-expanded", "true")
    page.keyboard.press("ArrowLeft")  # closes
    expect(node).to_have_attribute("aria-expanded", "false")
    page.keyboard.press("ArrowLeft")  # to the parent
    expect(root).to_be_focused()
    page.keyboard.press("End")
    last = tree.locator("[role=treeitem]").last
    expect(last).to_be_focused()
    page.keyboard.press("Home")
    expect(root).to_be_focused()

    # Down to tree-a under its node, then Enter opens it.
    node_a = item(tree, "node", vms["tree-a"]["node"])
    node_a.focus()
    expect(node_a).to_have_attribute("aria-expanded", "true")
    page.keyboard.press("ArrowRight")  # already open: to its first child
    vm_a = item(tree, "vm", "tree-a", f"cluster/node:{vms['tree-a']['node']}")
    expect(vm_a).to_be_focused()
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(rf"/vms/{vms['tree-a']['id']}$"))
    expect(vm_a).to_have_attribute("aria-selected", "true")


def test_clicks_open_the_views_of_vms_nodes_and_pools(
    page: Page, ui: str, vms: dict[str, dict[str, str]], image: str
) -> None:
    page.goto(f"{ui}/")
    tree = page.locator("[role=tree]")
    item(tree, "vm", "tree-a", f"cluster/node:{vms['tree-a']['node']}").click()
    expect(page).to_have_url(re.compile(rf"/vms/{vms['tree-a']['id']}$"))
    expect(page.locator("main h1")).to_have_text("tree-a")

    node = vms["tree-b"]["node"]
    item(tree, "node", node).click()
    expect(page).to_have_url(re.compile(rf"/nodes\?node={node}$"))
    expect(page.locator(f"[data-node={node}]")).to_have_class(re.compile(r"\bfocused\b"))

    pool = image.split("/")[0]
    item(tree, "pool", pool).click()
    expect(page).to_have_url(re.compile(rf"/storage\?pool={pool}$"))
    expect(page.locator("[data-testid=pool-select]")).to_have_value(pool)

    # The Groups view is another branch's: here only where the item leads is checked.
    expect(item(tree, "group", GROUP)).to_have_attribute("data-to", f"/groups?group={GROUP}")


def rows(page: Page, *names: str) -> list[Locator]:
    return [page.locator(f"tr[data-vm={name}]") for name in names]


def test_bulk_start_then_bulk_stop(
    page: Page, ui: str, vms: dict[str, dict[str, str]], screenshots: Path
) -> None:
    page.goto(f"{ui}/vms")
    a, b = rows(page, "tree-a", "tree-b")
    every = page.locator("[data-testid=select-all]")
    a.locator("[data-testid=select]").check()
    expect(page.locator("[data-testid=bulk-count]")).to_have_attribute("data-count", "1")
    assert every.evaluate("(box) => box.indeterminate"), "some shown are chosen, not all"
    every.check()  # every VM shown: both
    expect(b.locator("[data-testid=select]")).to_be_checked()
    expect(page.locator("[data-testid=bulk-count]")).to_have_attribute("data-count", "2")

    start = page.locator("[data-testid=bulk-start]")
    expect(start).to_have_attribute("data-op", "POST /vms/{ref}/actions/{action}")
    start.click()  # not destructive: no question
    results = page.locator("[data-testid=bulk-results]")
    expect(results).to_have_attribute("data-action", "start")
    for name in ("tree-a", "tree-b"):
        expect(results.locator(f"li[data-vm={name}]")).to_have_attribute("data-result", "accepted")
    for row in (a, b):
        expect(row.locator(".badge")).to_have_attribute("data-state", "running", timeout=BOOT)
    # The tree follows (live).
    tree_a = item(page, "vm", "tree-a", f"cluster/node:{vms['tree-a']['node']}")
    expect(tree_a.locator(".badge")).to_have_attribute("data-state", "running")
    settle(page)
    shot(page, screenshots, "vms-bulk-start")

    stop = page.locator("[data-testid=bulk-stop]")
    expect(stop).to_have_attribute("data-op", "POST /vms/{ref}/actions/{action}")
    stop.click()
    dialog = page.locator("[data-testid=confirm]")
    expect(dialog).to_contain_text("Power off 2 VMs?")
    expect(dialog).to_contain_text("tree-a, tree-b")
    page.click("[data-testid=confirm-ok]")
    expect(results).to_have_attribute("data-action", "stop")
    for name in ("tree-a", "tree-b"):
        expect(results.locator(f"li[data-vm={name}]")).to_have_attribute("data-result", "accepted")
    for row in (a, b):
        expect(row.locator(".badge")).to_have_attribute("data-state", "shutoff", timeout=STEP * 2)


def test_a_refusal_is_shown_for_each_vm_with_the_reason(page: Page) -> None:
    # Both are off: a live migration is refused for each, and says why.
    page.click("[data-testid=bulk-migrate]")
    dialog = page.locator("[data-testid=migrate-dialog]")
    expect(dialog).to_contain_text("Migrate 2 VMs")
    expect(dialog.locator("[data-testid=migrate-target]")).to_have_value("")  # automatic
    submit = dialog.locator("[data-testid=migrate-submit]")
    expect(submit).to_have_attribute("data-op", "POST /vms/{ref}/actions/migrate")
    submit.click()
    results = page.locator("[data-testid=bulk-results]")
    expect(results).to_have_attribute("data-action", "migrate")
    for name in ("tree-a", "tree-b"):
        line = results.locator(f"li[data-vm={name}]")
        expect(line).to_have_attribute("data-result", "refused")
        expect(line).to_contain_text("409")
        expect(line).to_contain_text(f"VM {name} is not running")


def open_menu(page: Page, name: str) -> Locator:
    page.locator(f"tr[data-vm={name}] [data-testid=row-menu]").click()
    menu = page.locator("[role=menu]")
    expect(menu).to_be_visible()
    return menu


def test_row_actions_follow_the_vms_power(page: Page, screenshots: Path) -> None:
    (a,) = rows(page, "tree-a")
    menu = open_menu(page, "tree-a")
    # Off: it can be started (or deleted), not paused.
    expect(menu.locator("[data-action=start]")).to_be_focused()
    expect(menu.locator("[data-action=pause]")).to_have_count(0)
    expect(menu.locator("[data-action=start]")).to_have_attribute(
        "data-op", "POST /vms/{ref}/actions/{action}"
    )
    expect(menu.locator("[data-action=delete]")).to_have_attribute("data-op", "DELETE /vms/{ref}")
    page.keyboard.press("Escape")
    expect(menu).to_have_count(0)
    expect(a.locator("[data-testid=row-menu]")).to_be_focused()

    # Start it from the menu with the keyboard, then pause and resume it.
    page.keyboard.press("ArrowDown")
    page.keyboard.press("Enter")
    expect(a.locator(".badge")).to_have_attribute("data-state", "running", timeout=BOOT)
    menu = open_menu(page, "tree-a")
    expect(menu.locator("[data-action=migrate]")).to_be_visible()  # running: it can move
    settle(page)
    shot(page, screenshots, "vms-row-menu")
    menu.locator("[data-action=pause]").click()
    expect(a.locator(".badge")).to_have_attribute("data-state", "paused")
    open_menu(page, "tree-a").locator("[data-action=resume]").click()
    expect(a.locator(".badge")).to_have_attribute("data-state", "running")


def test_russian_and_back(page: Page, ui: str) -> None:
    page.goto(f"{ui}/vms")
    page.locator("tr[data-vm=tree-a] [data-testid=select]").check()
    page.select_option("[data-testid=language]", "ru")
    try:
        expect(page.locator("[data-testid=tree-toggle]")).to_contain_text("Дерево ресурсов")
        page.locator("[data-testid=tree-search]").fill("tree")  # volumes and members shown too
        settle(page)
        assert_translated(page, "ru", "/vms with the tree")
        page.locator("[data-testid=bulk-stop]").click()
        expect(page.locator("[data-testid=confirm]")).to_contain_text("Выключить питание tree-a?")
        assert_translated(page, "ru", "/vms, confirming a stop")
        page.click("[data-testid=confirm-ok]")
        results = page.locator("[data-testid=bulk-results]")
        expect(results.locator("li[data-vm=tree-a]")).to_have_attribute("data-result", "accepted")
        open_menu(page, "tree-b")
        settle(page)
        assert_translated(page, "ru", "/vms with results and a row menu")
        page.keyboard.press("Escape")
        page.click("[data-testid=bulk-migrate]")
        assert_translated(page, "ru", "/vms, migrate dialog")
        page.keyboard.press("Escape")
    finally:
        page.select_option("[data-testid=language]", "en")
        page.locator("[data-testid=tree-search]").fill("")
    assert_translated(page, "en", "/vms with the tree")


def test_the_panel_closes_and_stays_closed(page: Page, ui: str) -> None:
    page.click("[data-testid=tree-close]")
    expect(page.locator("[role=tree]")).to_have_count(0)
    toggle = page.locator("[data-testid=tree-toggle]")
    expect(toggle).to_have_attribute("aria-expanded", "false")
    page.reload()
    expect(page.locator("main h1")).to_be_visible()
    expect(page.locator("[role=tree]")).to_have_count(0)
    toggle.click()
    expect(page.locator("[role=tree]")).to_be_visible()


def test_delete_a_vm_with_its_volumes_from_its_row(
    page: Page, ui: str, vms: dict[str, dict[str, str]]
) -> None:
    page.goto(f"{ui}/vms")
    open_menu(page, "tree-b").locator("[data-action=delete-volumes]").click()
    dialog = page.locator("[data-testid=confirm]")
    expect(dialog).to_contain_text("Delete tree-b?")
    expect(dialog).to_contain_text("The volumes are deleted too.")
    page.click("[data-testid=confirm-ok]")
    expect(page.locator("tr[data-vm=tree-b]")).to_have_count(0, timeout=STEP * 2)
    expect(item(page, "vm", "tree-b")).to_have_count(0)
    page.locator("[data-testid=tree-search]").fill("tree-b")
    expect(item(page, "volume", "tree-b-disk0")).to_have_count(0)
    page.locator("[data-testid=tree-search]").fill("")


def test_phone_width(
    browser: Browser,
    ui: str,
    admin_password: str,
    vms: dict[str, dict[str, str]],
    screenshots: Path,
) -> None:
    context = browser.new_context(
        viewport={"width": 375, "height": 812}, locale="ru-RU", is_mobile=True, has_touch=True
    )
    context.set_default_timeout(STEP)
    try:
        phone = context.new_page()
        log_in(phone, ui, admin_password)

        def no_sideways(where: str) -> None:
            settle(phone)
            wide = phone.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
            assert wide[0] <= wide[1], f"{where} scrolls sideways at 375 px: {wide}"

        phone.goto(f"{ui}/vms")
        expect(phone.locator("tr[data-vm=tree-a]")).to_be_visible()
        expect(phone.locator("[role=tree]")).to_have_count(0)  # a drawer, closed
        no_sideways("/vms")
        assert_translated(phone, "ru", "/vms at 375 px")
        menu = open_menu(phone, "tree-a")
        box = menu.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375, box
        no_sideways("/vms with a row menu")
        shot(phone, screenshots, "phone-vms-menu")
        phone.keyboard.press("Escape")

        phone.click(".menu-button")
        phone.click("[data-testid=tree-toggle]")
        tree = phone.locator("[role=tree]")
        expect(tree).to_be_visible()
        phone.mouse.click(360, 600)  # beside the drawer: it closes
        expect(tree).to_have_count(0)
        phone.click(".menu-button")
        phone.click("[data-testid=tree-toggle]")
        expect(phone.locator("#nav")).not_to_be_visible()  # the menu gave way to the tree
        expand(item(tree, "node", vms["tree-a"]["node"]))
        vm_a = item(tree, "vm", "tree-a")
        expect(vm_a).to_be_visible()
        no_sideways("the tree drawer")
        assert_translated(phone, "ru", "the tree drawer at 375 px")
        shot(phone, screenshots, "phone-tree")
        vm_a.click()
        expect(phone).to_have_url(re.compile(rf"/vms/{vms['tree-a']['id']}$"))
        expect(tree).to_have_count(0)  # the drawer closes once it took you somewhere
        no_sideways("/vms/{id}")
    finally:
        context.close()


def fake_vm(number: int, node: str) -> dict[str, object]:
    name = f"bulk{number:04d}"
    spec = {
        "name": name, "vcpus": 1, "memory_mib": 16, "firmware": "bios", "machine": "q35",
        "boot_order": [], "description": "", "ha": {"enabled": False, "priority": 50},
        "group": None, "disks": [], "nics": [],
    }  # fmt: skip
    return {
        "id": f"00000000-0000-0000-0000-{number:012d}", "name": name, "node": node,
        "power": "stopped", "state": "shutoff", "revision": 1, "created_at": 0, "status": None,
        "spec": spec,
    }  # fmt: skip


def test_a_thousand_vms_are_read_page_by_page_and_stay_fast(
    desktop: BrowserContext, ui: str, admin_password: str, cluster3: tuple[DevCluster, str]
) -> None:
    """GET /vms answered by the browser itself with 1000 VMs on one node, in the API's pages."""
    cluster, _ = cluster3
    node = cluster.nodes[0].name
    everything = [fake_vm(n, node) for n in range(1000)]
    pages: list[str] = []

    def answer(route: Route) -> None:
        query = parse_qs(urlsplit(route.request.url).query)
        limit = int(query.get("limit", ["1000"])[0])
        start = int(query["continue"][0]) if "continue" in query else 0
        pages.append(f"{start}+{limit}")
        chosen = everything[start : start + limit]
        more = start + limit < len(everything)
        headers = {"X-Continue": str(start + limit)} if more else {}
        route.fulfill(json=chosen, headers=headers)

    page = desktop.new_page()
    try:
        log_in(page, ui, admin_password)  # a new tab: a session of its own
        page.route(re.compile(r".*/api/v1/vms(\?.*)?$"), answer)
        page.goto(f"{ui}/vms")
        tree = page.locator("[role=tree]")
        row = item(tree, "node", node)
        expect(row.locator(".tree-count")).to_have_text("1000")
        expect(page.locator("tr[data-vm=bulk0999]")).to_have_count(1)  # the list has all too
        assert "0+500" in pages and "500+500" in pages, pages
        # Collapsed, the node's VMs are not rendered at all.
        if row.get_attribute("aria-expanded") == "true":
            row.locator(".twisty").click()
        expect(tree.locator("[data-kind=vm]")).to_have_count(0)

        began = time.monotonic()
        row.locator(".twisty").click()
        expect(tree.locator(f"[data-kind=vm][data-parent='cluster/node:{node}']")).to_have_count(
            1000
        )
        opened = time.monotonic() - began
        assert opened < 10, f"expanding a node of 1000 VMs took {opened:.1f} s"
        began = time.monotonic()
        page.locator("[data-testid=tree-search]").fill("bulk0500")
        expect(tree.locator("[data-kind=vm]")).to_have_count(1)
        searched = time.monotonic() - began
        assert searched < 10, f"a search among 1000 VMs took {searched:.1f} s"
        page.locator("[data-testid=tree-search]").fill("")
        row.locator(".twisty").click()
        settle(page)
    finally:
        page.close()
