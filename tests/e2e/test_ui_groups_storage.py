"""The web UI for VM groups, mass deployment, volume resize and taking disks out of an ardfs
pool (issue 13), in a real browser against a real 3-node devcluster.

The tests run in order on one page: a group made through its schema-drawn form, its rule
changed, a member listed, its deletion refused then allowed; a batch of VMs planned, then
made with their tasks followed; a volume grown and refused a shrink; a disk added to and taken
out of an ardfs pool. Each view is also checked in Russian and at phone width.
"""

import re
from pathlib import Path

import pytest
import test_ui
from browsing import STEP, assert_fits, assert_translated, log_in, settle, shot
from playwright.sync_api import Page, expect
from support import Api, wait_for

from heron.devcluster import DevCluster

pytestmark = pytest.mark.integration

# One browser page for the module, as test_ui has it: logged in by the first test.
page = test_ui.page

MIB = 2**20


def in_russian(page: Page, where: str) -> None:
    """The page as it is, checked in Russian and then in English again."""
    page.select_option("[data-testid=language]", "ru")
    try:
        settle(page)
        assert_translated(page, "ru", where)
    finally:
        page.select_option("[data-testid=language]", "en")
    settle(page)
    assert_translated(page, "en", where)


def confirm(page: Page, *says: str) -> None:
    dialog = page.locator("[data-testid=confirm]")
    for text in says:
        expect(dialog).to_contain_text(text)
    page.click("[data-testid=confirm-ok]")
    expect(dialog).to_have_count(0)


def test_log_in(page: Page, ui: str, admin_password: str) -> None:
    log_in(page, ui, admin_password)


def test_create_a_group_with_the_form(page: Page, ui: str, screenshots: Path) -> None:
    page.click("[data-testid=nav-groups]")
    expect(page).to_have_url(re.compile(r"/groups$"))
    form = page.locator("[data-testid=group-form]")
    # The form follows the schema of POST /groups: its fields, with their defaults.
    expect(form.locator("select[name=placement] option")).to_have_count(3)
    expect(form.locator("select[name=placement]")).to_have_value("none")
    expect(form.locator("input[name=strict]")).to_be_checked()

    form.locator("input[name=name]").fill("Not A Name!")
    form.locator("[data-testid=group-submit]").click()
    reason = form.locator("[data-field=name] [data-testid=field-error]")
    expect(reason).to_contain_text("must be 1-63 characters")
    expect(form.locator("[data-testid=error]")).to_contain_text("422")

    form.locator("input[name=name]").fill("db")
    form.locator("select[name=placement]").select_option("spread")
    with page.expect_request(lambda r: r.url.endswith("/groups") and r.method == "POST") as sent:
        form.locator("[data-testid=group-submit]").click()
    assert sent.value.post_data_json == {
        "name": "db",
        "placement": "spread",
        "strict": True,
        "ha": None,
    }
    row = page.locator("tr[data-group=db]")
    expect(row.locator("[data-testid=group-placement]")).to_have_attribute(
        "data-placement", "spread"
    )
    expect(row.locator("[data-testid=group-strict]")).to_have_text("must")
    expect(row.locator("[data-testid=group-members]")).to_have_text("none")
    expect(form.locator("[data-testid=field-error]")).to_have_count(0)
    shot(page, screenshots, "groups")


def test_change_a_group_s_rules_and_see_its_members(
    page: Page, api: Api, screenshots: Path
) -> None:
    row = page.locator("tr[data-group=db]")
    row.locator("[data-testid=group-edit]").click()
    edit = page.locator("[data-testid=group-edit-form]")
    expect(edit.locator("select[name=placement]")).to_have_value("spread")
    edit.locator("select[name=placement]").select_option("together")
    edit.locator("input[name=strict]").uncheck()
    edit.locator("input[name=ha]").check()  # the group's own HA policy, for its members
    edit.locator("input[name='ha.priority']").fill("70")
    with page.expect_request(lambda r: r.url.endswith("/groups/db")) as sent:
        edit.locator("[data-testid=group-save]").click()
    assert sent.value.method == "PATCH"
    assert sent.value.post_data_json == {
        "placement": "together",
        "strict": False,
        "ha": {"enabled": False, "priority": 70},
    }
    expect(edit).to_have_count(0)
    expect(row.locator("[data-testid=group-placement]")).to_have_attribute(
        "data-placement", "together"
    )
    expect(row.locator("[data-testid=group-strict]")).to_have_text("should")
    expect(row.locator("[data-testid=group-ha]")).to_have_text("off")

    # Two members, made through the API (not started): a soft "together" puts both on one
    # node, and the list shows them with links to their pages.
    for name in ("db-a", "db-b"):
        api.ok("POST", "/vms", json={"name": name, "memory_mib": 16, "group": "db"})
    members = row.locator("[data-testid=group-members] a")
    expect(members).to_have_text(["db-a", "db-b"])
    expect(members.first).to_have_attribute("href", re.compile(r"^/vms/[0-9a-f-]{8,}$"))

    # Spread, strictly, is what they break where they are: refused, with who is where.
    row.locator("[data-testid=group-edit]").click()
    edit.locator("select[name=placement]").select_option("spread")
    edit.locator("input[name=strict]").check()
    edit.locator("[data-testid=group-save]").click()
    error = edit.locator("[data-testid=error]")
    expect(error).to_contain_text("409")
    expect(error).to_contain_text(re.compile(r"db-a, db-b on node\d"))
    expect(edit.locator("[data-field=placement] [data-testid=field-error]")).to_be_visible()
    expect(row.locator("[data-testid=group-placement]")).to_have_attribute(
        "data-placement", "together"
    )
    shot(page, screenshots, "groups-refused")
    in_russian(page, "/groups (a refused rule)")


def test_a_group_with_members_is_not_deleted(page: Page, api: Api) -> None:
    row = page.locator("tr[data-group=db]")
    row.locator("[data-testid=group-delete]").click()
    confirm(page, "still has VMs")
    error = page.locator("section > [data-testid=error]")
    expect(error).to_contain_text("409")
    expect(error).to_contain_text("group db still has VMs: db-a, db-b")
    expect(row).to_have_count(1)

    for vm in api.ok("GET", "/vms"):
        if vm["spec"]["group"] == "db":
            api.wait_task(api.ok("DELETE", f"/vms/{vm['id']}")["task"])
    expect(row.locator("[data-testid=group-members]")).to_have_text("none")
    row.locator("[data-testid=group-delete]").click()
    confirm(page, "no longer applies")
    expect(row).to_have_count(0)


def test_create_several_vms_after_a_dry_run(
    page: Page, ui: str, api: Api, screenshots: Path
) -> None:
    api.ok("POST", "/groups", json={"name": "desks", "placement": "spread", "strict": True})
    page.goto(f"{ui}/vms")
    page.click("[data-testid=vm-batch]")
    expect(page).to_have_url(re.compile(r"/vms/batch$"))
    form = page.locator("[data-testid=batch-form]")
    form.locator("[data-testid=batch-prefix]").fill("desk")
    form.locator("[data-testid=batch-count]").fill("4")
    form.locator("input[name=memory_mib]").fill("32")
    form.locator("select[name=group]").select_option("desks")
    form.locator("input[type=radio][value=none]").check()  # no disk: small and quick
    expect(form.locator("[data-testid=batch-names]")).to_have_text("Named desk-001 … desk-004")

    # Four in a group of one per node, on three nodes: the dry run says why not.
    form.locator("[data-testid=batch-plan]").click()
    error = form.locator("[data-testid=error]")
    expect(error).to_contain_text("409")
    expect(error).to_contain_text("group desks (one VM per node) leaves no node")
    expect(page.locator("[data-testid=batch-plan-table]")).to_have_count(0)

    form.locator("[data-testid=batch-count]").fill("3")
    with page.expect_request(lambda r: r.url.endswith("/vms/batch")) as sent:
        form.locator("[data-testid=batch-plan]").click()
    body = sent.value.post_data_json
    assert (body["name"], body["count"], body["dry_run"]) == ("desk", 3, True)
    assert (body["memory_mib"], body["group"], body["disks"]) == (32, "desks", [])
    plan = page.locator("[data-testid=batch-plan-table]")
    expect(plan.locator("tbody tr")).to_have_count(3)
    expect(plan).to_contain_text("3 VMs over 3 node(s)")
    nodes = plan.locator("[data-testid=planned-node]").all_inner_texts()
    assert len(set(nodes)) == 3, nodes
    assert [vm for vm in api.ok("GET", "/vms") if vm["name"].startswith("desk")] == []
    in_russian(page, "/vms/batch (planned)")

    submit = plan.locator("[data-testid=batch-submit]")
    expect(submit).to_have_text("Create 3 VMs")
    with page.expect_request(lambda r: r.url.endswith("/vms/batch")) as sent:
        submit.click()
    assert sent.value.post_data_json["dry_run"] is False
    made = page.locator("[data-testid=batch-made]")
    rows = made.locator("tbody tr")
    expect(rows).to_have_count(3)
    expect(made.locator("a")).to_have_text(["desk-001", "desk-002", "desk-003"])
    for task in made.locator("[data-testid=made-task]").all():
        expect(task).to_have_attribute("data-state", "succeeded", timeout=STEP * 2)
        expect(task.locator("[role=progressbar]")).to_have_attribute("aria-valuenow", "100")
    placed = {vm["name"]: vm["node"] for vm in api.ok("GET", "/vms")}
    assert [placed[f"desk-00{i}"] for i in (1, 2, 3)] == nodes  # where the dry run said
    settle(page)
    shot(page, screenshots, "vms-batch")
    in_russian(page, "/vms/batch (made)")


def test_grow_a_volume_and_be_refused_a_shrink(
    page: Page, ui: str, api: Api, image: str, screenshots: Path
) -> None:
    pool = image.split("/")[0]
    made = api.ok(
        "POST",
        f"/pools/{pool}/volumes",
        json={"name": "grows", "size": 64 * MIB, "format": "qcow2"},
    )
    api.wait_task(made["task"])
    page.goto(f"{ui}/storage")
    page.select_option("[data-testid=pool-select]", pool)
    row = page.locator("tr[data-volume=grows]")
    expect(row).to_contain_text("64 MiB")

    row.locator("[data-testid=volume-resize]").click()
    form = page.locator("[data-testid=resize-form]")
    expect(form.locator("select[name=unit]")).to_have_value("MiB")
    expect(form.locator("input[name=size]")).to_have_value("64")
    form.locator("input[name=size]").fill("0.125")
    form.locator("select[name=unit]").select_option("GiB")
    with page.expect_request(lambda r: r.url.endswith(f"/volumes/{made['volume']}")) as sent:
        form.locator("[data-testid=resize-submit]").click()
    assert (sent.value.method, sent.value.post_data_json) == ("PATCH", {"size": 128 * MIB})
    expect(form).to_have_count(0)
    expect(row).to_contain_text("128 MiB")  # once the resize task has grown it

    row.locator("[data-testid=volume-resize]").click()
    form.locator("input[name=size]").fill("32")
    form.locator("select[name=unit]").select_option("MiB")
    form.locator("[data-testid=resize-submit]").click()
    error = form.locator("[data-testid=error]")
    expect(error).to_contain_text("422")
    expect(error).to_contain_text("volumes only grow")
    expect(error.locator("code")).to_have_text("body.size")
    expect(row).to_contain_text("128 MiB")
    settle(page)
    shot(page, screenshots, "storage-resize-refused")
    in_russian(page, "/storage (a refused shrink)")


def test_add_then_take_out_an_ardfs_disk(
    page: Page, ui: str, api: Api, cluster3: tuple[DevCluster, str], screenshots: Path
) -> None:
    cluster, _ = cluster3
    node1, node2 = cluster.nodes[0], cluster.nodes[1]
    api.ok("POST", "/pools", json={"name": "hci1", "type": "ardfs", "protection": "rf1"})
    page.goto(f"{ui}/storage")
    page.select_option("[data-testid=pool-select]", "hci1")
    disks = page.locator("[data-testid=ardfs-disks]")
    add = disks.locator("[data-testid=disk-form]")
    paths = {}
    for node in (node1, node2):
        paths[node.name] = f"{node.state_dir}/hci1-disk"
        add.locator("select[name=node]").select_option(node.name)
        add.locator("input[name=path]").fill(paths[node.name])
        add.locator("[data-testid=disk-submit]").click()
        row = disks.locator(f"tr[data-member={node.name}]")
        expect(row.locator("[data-testid=member-disks] code")).to_have_text([paths[node.name]])
        # Its heron-io registers: only then do new volumes get placed on its disk too.
        expect(row.locator("[data-testid=member-address] code")).to_have_text(
            re.compile(r"^\S+:\d+$")
        )

    # Each disk's device class, told by its node from the kernel, and set here.
    row1 = disks.locator(f"tr[data-member={node1.name}]")
    badge = row1.locator("[data-testid=disk-class]")
    expect(badge).not_to_have_text("class not told yet")
    with page.expect_response(lambda r: "/pools/hci1/disks/" in r.url) as reply:
        row1.locator("[data-testid=disk-class-select]").select_option("nvme")
    assert (reply.value.request.method, reply.value.status) == ("PATCH", 200)
    expect(badge).to_have_text("NVMe (set)")

    # One copy of each block (rf1): a disk that a volume is placed on holds its only copies.
    made = api.ok(
        "POST", "/pools/hci1/volumes", json={"name": "solo", "size": 8 * MIB, "format": "raw"}
    )
    api.wait_task(made["task"])
    expect(page.locator("tr[data-volume=solo]")).to_be_visible()
    row2 = disks.locator(f"tr[data-member={node2.name}]")
    row2.locator("[data-testid=disk-remove]").click()
    confirm(page, "volumes solo have blocks on this disk and nowhere else", "refuses")
    error = add.locator("[data-testid=error]")
    expect(error).to_contain_text("409")
    expect(error).to_contain_text("volumes solo have blocks only on disk")
    expect(row2.locator("[data-testid=member-disks] code")).to_have_text([paths[node2.name]])
    api.wait_task(api.ok("DELETE", f"/pools/hci1/volumes/{made['volume']}")["task"])
    expect(page.locator("tr[data-volume=solo]")).to_have_count(0)

    # No volume is placed on it now: nothing moves, and its directory stays.
    with page.expect_response(lambda r: "/pools/hci1/disks/" in r.url) as reply:
        row2.locator("[data-testid=disk-remove]").click()
        confirm(page, "nothing has to move", f"{paths[node2.name]} on {node2.name} is left")
    assert (reply.value.request.method, reply.value.status) == ("DELETE", 200)
    expect(row2.locator("[data-testid=member-disks] code")).to_have_count(0)
    expect(error).to_have_count(0)
    expect(row2.locator("[data-testid=member-disks]")).to_have_text("no disks")

    # The last disk of a pool that needs one: the API's refusal, as it came.
    row1 = disks.locator(f"tr[data-member={node1.name}]")
    row1.locator("[data-testid=disk-remove]").click()
    confirm(page)
    expect(error).to_contain_text("409")
    expect(error).to_contain_text("pool hci1 would keep 0 disks, rf1 needs 1")
    expect(row1.locator("[data-testid=member-disks] code")).to_have_text([paths[node1.name]])
    settle(page)
    shot(page, screenshots, "storage-disk-removal-refused")
    in_russian(page, "/storage (ardfs disk removal)")


def test_export_a_volume_over_iscsi_and_stop_it(page: Page, ui: str, api: Api) -> None:
    """The export form of an ardfs volume: the CHAP secret shown once, the target served by
    the node's agent with its portal, then stopped."""
    made = api.ok("POST", "/pools/hci1/volumes", json={"name": "esx", "size": 8 * MIB})
    api.wait_task(made["task"])
    page.goto(f"{ui}/storage")
    page.select_option("[data-testid=pool-select]", "hci1")
    row = page.locator("tr[data-volume=esx]")
    row.locator("[data-testid=volume-export]").click()
    form = page.locator("[data-testid=export-form]")
    form.locator("textarea[name=initiators]").fill("not-an-iqn")
    form.locator("[data-testid=export-submit]").click()
    expect(form.locator("[data-testid=error]")).to_contain_text("initiators")
    form.locator("textarea[name=initiators]").fill("iqn.1998-01.com.vmware:esx01")
    form.locator("[data-testid=export-submit]").click()
    secret = page.locator("[data-testid=iscsi-secret]")
    expect(secret).to_contain_text(re.compile(r"esx: [A-Za-z0-9]{16} "))
    exported = page.locator("[data-testid=export-table] tr[data-export=esx]")
    expect(exported).to_contain_text("iqn.2026-12.org.heron:hci1.esx.")
    expect(exported).to_contain_text("serving", timeout=90_000)
    expect(exported.locator("code").nth(1)).to_have_text(re.compile(r"^\S+:\d+$"))
    in_russian(page, "/storage (iscsi export)")
    row.locator("[data-testid=volume-unexport]").click()
    confirm(page, "initiators logged in lose the LUN")
    expect(exported).to_have_count(0)
    expect(row.locator("[data-testid=volume-export]")).to_be_visible()
    api.wait_task(api.ok("DELETE", f"/pools/hci1/volumes/{made['volume']}")["task"])


def test_a_disk_taken_out_has_its_copies_moved_with_progress(
    page: Page, ui: str, api: Api, cluster3: tuple[DevCluster, str], screenshots: Path
) -> None:
    cluster, _ = cluster3
    api.ok("POST", "/pools", json={"name": "hci2", "type": "ardfs", "protection": "rf2"})
    for node in cluster.nodes:
        disk = {"node": node.name, "path": f"{node.state_dir}/hci2-disk"}
        api.ok("POST", "/pools/hci2/disks", json=disk)

    def serving() -> bool:
        members = api.ok("GET", "/pools/hci2/members")
        return len(members) == 3 and all(m["address"] for m in members)

    wait_for(serving, STEP / 1000, "every node's heron-io in pool hci2")
    made = api.ok(
        "POST", "/pools/hci2/volumes", json={"name": "mirror", "size": 8 * MIB, "format": "raw"}
    )
    api.wait_task(made["task"])
    page.goto(f"{ui}/storage")
    page.select_option("[data-testid=pool-select]", "hci2")
    expect(page.locator("tr[data-volume=mirror]")).to_be_visible()

    gone = cluster.nodes[2]
    row = page.locator(f"[data-testid=ardfs-disks] tr[data-member={gone.name}]")
    row.locator("[data-testid=disk-remove]").click()
    confirm(page, "of 1 volume(s) (mirror) are made again from their other copies")
    expect(row.locator("[data-testid=member-disks]")).to_have_text("no disks")
    # The leader moves the volume off it: a volume.rebalance task, with its progress here.
    move = page.locator("[data-testid=disk-moves] li[data-move=mirror]")
    expect(move.locator("[role=progressbar]")).to_be_visible(timeout=STEP)
    expect(move.locator(".badge")).to_have_attribute("data-state", "succeeded", timeout=STEP * 4)
    expect(move.locator("[role=progressbar]")).to_have_attribute("aria-valuenow", "100")
    volume = api.ok("GET", f"/pools/hci2/volumes/{made['volume']}")
    assert gone.name not in {d["node"] for d in volume["placement"]}
    settle(page)
    shot(page, screenshots, "storage-disk-moved")
    in_russian(page, "/storage (a move after a disk left)")


def test_phone_width_without_horizontal_scrolling(
    phone: Page, ui: str, admin_password: str, screenshots: Path
) -> None:
    log_in(phone, ui, admin_password)
    for path in ("/groups", "/vms/batch", "/storage"):
        phone.goto(f"{ui}{path}")
        expect(phone.locator("main h1").first).to_be_visible()
        if path == "/groups":
            expect(phone.locator("tr[data-group=desks]")).to_be_visible()
            phone.locator("tr[data-group=desks] [data-testid=group-edit]").click()
        if path == "/storage":
            phone.select_option("[data-testid=pool-select]", "shared")
            phone.locator("tr[data-volume=grows] [data-testid=volume-resize]").click()
        assert_fits(phone, path)
        assert_translated(phone, "ru", path)
        shot(phone, screenshots, "phone" + path.replace("/", "-"))
    phone.select_option("[data-testid=pool-select]", "hci1")
    assert_fits(phone, "/storage (ardfs)")
    assert_translated(phone, "ru", "/storage (ardfs)")
