"""Memory-state volumes planned without processes (storage/vmstate.py): which pool holds a
memory snapshot's state when no disk of the VM is qcow2, how big its volume is, its name."""

from heron.models.common import NAME_PATTERN
from heron.models.storage import Pool, VolumeFormat
from heron.storage import vmstate

MiB = 1024**2
GiB = 1024**3


def pool(name: str, kind: str = "dir", **extra: object) -> Pool:
    if kind == "rbd":
        extra.setdefault("rbd_pool", "r")
    if kind == "nfs":
        extra.setdefault("server", "nas")
        extra.setdefault("export", "/x")
    if kind == "iscsi":
        extra.setdefault("portal", "array")
        extra.setdefault("target", "iqn.2020-01.x:t")
    return Pool(name=name, type=kind, created_at=1, **extra)  # type: ignore[arg-type]


HCI = pool("hci", "ardfs")
HCI2 = pool("hci2", "ardfs")
CEPH = pool("ceph", "rbd")
LOCAL = pool("local")
NAS = pool("nas", "nfs")
LUNS = pool("luns", "iscsi")


def test_the_vms_own_ardfs_pool_holds_its_memory_state() -> None:
    plan = vmstate.plan_state_pool([HCI], [LOCAL, NAS, HCI2, HCI], "n1", {"hci", "hci2"})
    assert plan.pool == HCI


def test_an_ardfs_pool_this_node_does_not_serve_is_passed_over() -> None:
    # hci is the VM's, yet its heron-io does not run here: a shared NFS pool comes next.
    plan = vmstate.plan_state_pool([HCI], [LOCAL, NAS, HCI], "n1", set())
    assert plan.pool == NAS


def test_a_pool_without_memory_states_leaves_it_to_a_shared_pool_then_a_local_one() -> None:
    assert vmstate.plan_state_pool([CEPH], [LOCAL, CEPH, NAS, LUNS], "n1", set()).pool == NAS
    assert vmstate.plan_state_pool([CEPH], [LOCAL, CEPH, LUNS], "n1", set()).pool == LOCAL


def test_no_pool_is_refused_naming_each_pool_and_why() -> None:
    plan = vmstate.plan_state_pool([CEPH, HCI], [CEPH, HCI, LUNS], "n1", set())
    assert plan.pool is None
    for said in (
        "ceph (rbd) holds no memory states",
        "hci (ardfs) is not served on node n1",
        "luns (iscsi) holds no memory states",
        "disk-only snapshot",
    ):
        assert said in plan.reason, plan.reason
    assert "there are no pools" in vmstate.plan_state_pool([], [], "n1", set()).reason


def test_the_volume_holds_every_page_and_the_images_tables_in_whole_blocks() -> None:
    for memory in (128 * MiB, 4 * GiB, 256 * GiB):
        size = vmstate.state_size(memory)
        assert size % vmstate.BLOCK == 0
        assert memory + vmstate.MARGIN <= size <= memory * 1.01 + vmstate.MARGIN + vmstate.BLOCK


def test_qcow2_files_where_the_pool_holds_them_else_qcow2_written_into_a_raw_volume() -> None:
    assert vmstate.state_format(LOCAL) == VolumeFormat.qcow2
    assert not vmstate.needs_inner_image(vmstate.state_format(NAS))
    assert vmstate.state_format(HCI) == VolumeFormat.raw
    assert vmstate.needs_inner_image(vmstate.state_format(HCI))


def test_the_name_says_whose_memory_within_a_names_length() -> None:
    import re

    name = vmstate.state_volume_name("v" * 63, "s0123456789ab")
    assert re.fullmatch(NAME_PATTERN, name) and name.endswith("-mem-s0123456789ab")
    assert vmstate.state_volume_name("web", "s0123456789ab") == "web-mem-s0123456789ab"
