"""Monica's charts in a real browser against a real devcluster whose nodes sample every 10 s:
a running VM's Metrics tab draws its CPU, memory and disk series once samples exist, a VM
that never ran says nothing was measured, the range picker changes what is asked for, a
node's charts read that node's series alone and, live, gain a point each second, the
overview's charts in Russian at phone width, and the forecast (memory, CPU, pools) on the
overview and the storage view in both languages."""

import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from browsing import assert_fits, assert_translated, log_in, open_tab, settle, shot
from playwright.sync_api import BrowserContext, Page, Request, expect
from support import Api, wait_for

pytestmark = pytest.mark.integration

# ms: a counter's rate needs two rounds of samples (10 s apart), then a chart's next read
# (every 10 s) shows it; a guest booting under TCG on a busy host slows every round.
SAMPLED = 180_000

# A chart has drawn points: its state is "ready" and it counts measured points.
DRAWN = """(testid) => {
  const chart = document.querySelector(`[data-testid=${testid}]`);
  return chart && chart.dataset.state === "ready" && Number(chart.dataset.points) > 0
    && chart.querySelector("canvas") !== null;
}"""


@pytest.fixture(scope="module")
def page(desktop: BrowserContext, ui: str, admin_password: str) -> Page:
    page = desktop.new_page()
    log_in(page, ui, admin_password)
    return page


@pytest.fixture(scope="module")
def vm(api: Api, image: str) -> dict[str, Any]:
    body = {
        "name": "measured",
        "memory_mib": 96,
        "node": "node1",
        "start": True,
        "disks": [{"pool": "shared", "source": image}],
    }
    reply = api.ok("POST", "/vms", json=body)
    api.wait_task(reply["task"])
    return api.vm(reply["vm"])


@pytest.fixture(scope="module")
def idle_vm(api: Api) -> dict[str, Any]:
    """A VM that never runs: nothing of it is ever measured."""
    body = {"name": "unmeasured", "memory_mib": 64, "node": "node2", "start": False}
    reply = api.ok("POST", "/vms", json=body)
    api.wait_task(reply["task"])
    return api.vm(reply["vm"])


def drawn(page: Page, testid: str) -> None:
    page.wait_for_function(DRAWN, arg=testid, timeout=SAMPLED)


def history_reads(page: Page) -> list[dict[str, list[str]]]:
    """The queries of the history requests the page sends from now on."""
    seen: list[dict[str, list[str]]] = []

    def record(request: Request) -> None:
        parts = urlsplit(request.url)
        if parts.path.endswith("/metrics/history"):
            seen.append(parse_qs(parts.query))

    page.on("request", record)
    listening.append(record)
    return seen


listening: list[Any] = []


def test_the_metrics_tab_draws_the_vms_samples(
    page: Page, ui: str, vm: dict[str, Any], screenshots: Path
) -> None:
    open_tab(page, ui, vm, "metrics")
    for chart in ("chart-vm-cpu", "chart-vm-memory", "chart-vm-disks"):
        drawn(page, chart)
    cpu = page.locator("[data-testid=chart-vm-cpu]")
    expect(cpu.locator(".chart-title")).to_have_text("CPU")
    expect(cpu.locator(".legend-label").first).to_have_text("used")
    expect(cpu.locator(".legend-value").first).to_contain_text("%")
    memory = page.locator("[data-testid=chart-vm-memory]")
    expect(memory.locator(".legend-value").first).to_contain_text("iB")  # MiB: RAM the QEMU holds
    disks = page.locator("[data-testid=chart-vm-disks] .legend-label")
    expect(disks.filter(has_text=": read").first).to_be_visible()
    expect(disks.filter(has_text=": write").first).to_be_visible()
    # Hovering the plot shows the values at that time (a date and time above the legend).
    box = cpu.locator(".u-over").bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] - 4, box["y"] + box["height"] / 2)
    expect(cpu.locator(".chart-moment")).not_to_have_text("Latest values", timeout=5_000)
    shot(page, screenshots, "vm-metrics")
    # A legend entry hides its line, and shows it again.
    entry = cpu.locator(".legend-item").first
    entry.click()
    expect(entry).to_have_attribute("aria-pressed", "false")
    entry.click()
    expect(entry).to_have_attribute("aria-pressed", "true")


def test_a_vm_never_measured_says_so(page: Page, ui: str, idle_vm: dict[str, Any]) -> None:
    open_tab(page, ui, idle_vm, "metrics")
    for chart in ("chart-vm-cpu", "chart-vm-memory", "chart-vm-disks", "chart-vm-nics"):
        empty = page.locator(f"[data-testid={chart}]")
        expect(empty).to_have_attribute("data-state", "empty")
        expect(empty.locator("[data-testid=chart-empty]")).to_have_text(
            "Nothing measured yet in this range"
        )


def test_the_range_picker_changes_the_request(page: Page, ui: str, vm: dict[str, Any]) -> None:
    open_tab(page, ui, vm, "metrics")
    page.click("[data-testid=range-1h]")
    settle(page)
    seen = history_reads(page)
    page.click("[data-testid=range-7d]")
    expect(page.locator("[data-testid=range-7d]")).to_have_attribute("aria-pressed", "true")
    expect(page.locator("[data-testid=range-1h]")).to_have_attribute("aria-pressed", "false")
    settle(page)

    def week(query: dict[str, list[str]]) -> bool:
        span = float(query["end"][0]) - float(query["start"][0])
        return span == 7 * 86400 and query["step"] == ["600"]

    asked = [q for q in seen if week(q)]
    metrics = {q["metric"][0] for q in asked}
    assert "libvirt_domain_info_cpu_time_seconds_total" in metrics, seen
    assert all(q["label"] == [f"vm={vm['id']}"] for q in asked), asked
    # A week of 1 min rollups in 10-minute buckets: the chart still has the VM's points.
    drawn(page, "chart-vm-cpu")
    page.remove_listener("request", listening.pop())
    page.click("[data-testid=range-1h]")
    settle(page)


def test_a_nodes_charts_show_that_node_alone(
    page: Page, ui: str, api: Api, screenshots: Path
) -> None:
    # The history API: a node label reads that node's store alone.
    def node2() -> list[str] | None:
        query = {"metric": "node_load1", "label": "node=node2"}
        answer = api.ok("GET", "/metrics/history", params=query)
        return [s["key"] for s in answer["series"]] or None

    assert wait_for(node2, SAMPLED / 1000, "node2's load") == ['node_load1{node="node2"}']
    page.goto(f"{ui}/nodes")
    settle(page)
    card = page.locator("[data-node=node2].card")
    card.locator("[data-testid=node-metrics-toggle]").click()
    expect(card.locator("[data-testid=node-metrics]")).to_be_visible()
    for chart in ("chart-node-cpu", "chart-node-load", "chart-node-memory"):
        drawn(page, chart)
    legend = card.locator("[data-testid=chart-node-memory] .legend-label")
    expect(legend).to_have_text(["used", "total"])
    modes = card.locator("[data-testid=chart-node-cpu] .legend-label")
    expect(modes.filter(has_text="user")).to_have_count(1)
    expect(modes.filter(has_text="idle")).to_have_count(0)
    shot(page, screenshots, "node-metrics")


# A chart whose measured points outnumber `count` (each second adds a point to each line).
MORE = """([testid, count]) => {
  const chart = document.querySelector(`[data-testid=${testid}]`);
  return chart && chart.dataset.state === "ready" && Number(chart.dataset.points) > count;
}"""


def points(page: Page, testid: str) -> int:
    return int(page.locator(f"[data-testid={testid}]").get_attribute("data-points") or 0)


def test_live_on_a_nodes_charts_adds_a_point_each_second(
    page: Page, ui: str, screenshots: Path
) -> None:
    page.goto(f"{ui}/nodes")
    settle(page)
    card = page.locator("[data-node=node2].card")
    if not card.locator("[data-testid=node-metrics]").is_visible():
        card.locator("[data-testid=node-metrics-toggle]").click()
    asked: list[str] = []

    def record(request: Request) -> None:
        if "/metrics/live?" in request.url:
            asked.append(request.url)

    page.on("request", record)
    live = card.locator("[data-testid=range-live]")
    expect(live).to_have_text("Live")
    live.click()
    expect(live).to_have_attribute("aria-pressed", "true")
    # The first read starts node2 watching itself: then each second brings a point.
    drawn(page, "chart-node-memory")
    for _ in range(3):
        seen = points(page, "chart-node-memory")
        page.wait_for_function(MORE, arg=["chart-node-memory", seen], timeout=30_000)
    drawn(page, "chart-node-cpu")
    shot(page, screenshots, "node-metrics-live")
    page.remove_listener("request", record)
    assert asked and all("object=node%3Anode2" in url for url in asked), asked
    assert any("since=" in url for url in asked), asked  # later reads: the new points only
    card.locator("[data-testid=range-1h]").click()
    settle(page)


def test_the_overview_charts_in_russian_at_phone_width(
    phone: Page, ui: str, admin_password: str, vm: dict[str, Any], screenshots: Path
) -> None:
    log_in(phone, ui, admin_password)
    settle(phone)
    overview = phone.locator("[data-testid=overview-metrics]")
    expect(overview.locator("h2")).to_have_text("Активность")
    expect(phone.locator("[data-testid=range-15m]").first).to_have_text("15 мин")
    drawn(phone, "chart-cluster-cpu")
    drawn(phone, "chart-cluster-memory")
    cpu = phone.locator("[data-testid=chart-cluster-cpu]")
    expect(cpu.locator(".chart-title")).to_have_text("Загрузка процессоров по узлам")
    expect(cpu.locator(".legend-label")).to_have_text(["node1", "node2", "node3"], timeout=SAMPLED)
    expect(cpu.locator(".legend-value").first).to_contain_text("%")
    memory = phone.locator("[data-testid=chart-cluster-memory] .legend-value").first
    expect(memory).to_contain_text("иБ")  # ГиБ or МиБ, in Russian
    forecast = phone.locator("[data-testid=forecast]")
    expect(forecast.locator("h2")).to_have_text("Прогноз")
    expect(forecast.locator(".forecast-label")).to_have_text(
        [re.compile(r"^Память"), "Процессоры", re.compile(r"^Пул ")]
    )
    # A cluster minutes old: no trend yet, and the card says why.
    expect(forecast.locator("[data-testid=forecast-text]").first).to_have_text(
        "пока мало истории (нужны хотя бы сутки)"
    )
    assert_fits(phone, "the overview with charts")
    assert_translated(phone, "ru", "/ (phone, charts)")
    shot(phone, screenshots, "phone-overview-metrics")

    open_tab(phone, ui, vm, "metrics")
    drawn(phone, "chart-vm-cpu")
    vm_cpu = phone.locator("[data-testid=chart-vm-cpu]")
    expect(vm_cpu.locator(".chart-title")).to_have_text("Процессор")
    expect(vm_cpu.locator(".legend-label").first).to_have_text("использовано")
    assert_fits(phone, "the VM's metrics tab")
    assert_translated(phone, "ru", f"/vms/{vm['name']}?tab=metrics (phone)")
    shot(phone, screenshots, "phone-vm-metrics")


def test_the_overview_forecasts_memory_cpu_and_the_pool_that_fills_first(
    page: Page, ui: str, api: Api, screenshots: Path
) -> None:
    def cores() -> dict[str, Any] | None:
        answer = api.ok("GET", "/metrics/forecast")
        return answer if answer["resources"][-1]["capacity"] else None

    # The card reads the forecast when the view opens: after the nodes' cores are measured.
    answer = wait_for(cores, SAMPLED / 1000, "the nodes' cores measured")
    page.goto(ui)
    settle(page)
    forecast = page.locator("[data-testid=forecast]")
    expect(forecast.locator("h2")).to_have_text("Forecast")
    rows = forecast.locator("[data-testid=forecast-row]")
    expect(rows).to_have_count(3)
    expect(rows.nth(0)).to_have_attribute("data-kind", "memory")
    expect(rows.nth(1)).to_have_attribute("data-kind", "cpu")
    expect(rows.nth(2)).to_have_attribute("data-kind", "pool")
    # What the API says, as the card says it: a fresh cluster has under a day of history.
    assert {r["status"] for r in answer["resources"]} == {"not_enough_history"}
    expect(rows.locator("[data-testid=forecast-text]")).to_have_text(
        ["not enough history yet (a day at least)"] * 3
    )
    # Once measured, the CPU row shows the cores in use of the cores there are.
    expect(rows.nth(1).locator(".forecast-details")).to_contain_text(" cores")
    assert_translated(page, "en", "/ (forecast)")
    shot(page, screenshots, "overview-forecast")


def test_the_storage_view_charts_the_pools_use(
    page: Page, ui: str, image: str, screenshots: Path
) -> None:
    pool = image.split("/")[0]
    page.goto(f"{ui}/storage?pool={pool}")
    settle(page)
    drawn(page, "chart-pool-used")
    used = page.locator("[data-testid=chart-pool-used]")
    # A pool every node mounts: each node's view of it, one line a node.
    expect(used.locator(".legend-label")).to_have_text(["node1", "node2", "node3"], timeout=SAMPLED)
    expect(used.locator(".legend-value").first).to_contain_text("iB")
    drawn(page, "chart-pool-filesystems")  # the filesystem holding the pool's directory
    # The pool's forecast: one row (every node sees the same pool).
    forecast = page.locator("[data-testid=pool-forecast] [data-testid=forecast-row]")
    expect(forecast).to_have_count(1)
    expect(forecast).to_have_attribute("data-name", pool)
    expect(forecast.locator("[data-testid=forecast-text]")).to_have_text(
        "not enough history yet (a day at least)"
    )
    shot(page, screenshots, "storage-metrics")
