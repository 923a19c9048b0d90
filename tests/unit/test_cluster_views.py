"""The cluster's pure views: the leave plan (what the leave refuses for and what happens to
the data on the node's disks), DRS's decisions from audit entries, and the join commands."""

from heron.configdb.membership import Member
from heron.models.storage import ArdfsDisk, ArdfsMember, PlacedDisk, Pool, Volume
from heron.services import cluster
from heron.services.leave import ClusterState, plan, refusal


def member(name: str, learner: bool = False, id: int = 0) -> Member:
    return Member(id or hash(name) & 0xFFFF, name, (f"http://{name}:2380",), (), learner)


def ardfs(pool: str, node: str, *disks: str) -> ArdfsMember:
    return ArdfsMember(pool=pool, node=node, disks=[ArdfsDisk(id=d, path=f"/d/{d}") for d in disks])


def volume(pool: str, name: str, *disks: tuple[str, str], node: str | None = None) -> Volume:
    return Volume(
        id=f"id-{name}",
        pool=pool,
        name=name,
        format="raw",
        size=1,
        node=node,
        placement=[PlacedDisk(id=d, node=n) for d, n in disks] or None,
        created_at=0,
    )


def state(**changes: object) -> ClusterState:
    base = ClusterState(
        live={"n1", "n2", "n3"},
        left=set(),
        vms_on=[],
        members=[member("n1"), member("n2"), member("n3")],
        pools={"local": Pool(name="local", created_at=0)},
        ardfs_members=[],
        volumes=[],
    )
    return ClusterState(**{**base.__dict__, **changes})  # type: ignore[arg-type]


def test_an_empty_node_may_leave_and_its_member_goes() -> None:
    found = plan("n3", state())
    assert found.can_leave and found.etcd_member and not found.only_voter
    assert found.blockers == [] and found.ardfs == [] and found.local_volumes == []


def test_vms_and_the_only_voter_block() -> None:
    found = plan("n1", state(vms_on=["b", "a"], members=[member("n1"), member("n2", True)]))
    assert not found.can_leave and found.vms == ["a", "b"] and found.only_voter
    assert [b.kind for b in found.blockers] == ["vms", "only-voter"]
    assert "(a, b)" in refusal(found) and "only etcd voter" in refusal(found)


def test_a_client_node_has_no_member_to_remove() -> None:
    found = plan("n4", state(live={"n1", "n2", "n3", "n4"}))
    assert found.can_leave and not found.etcd_member


def test_node_local_volumes_are_said_but_do_not_block() -> None:
    shared = Pool(name="nfs", type="nfs", server="s", export="/e", created_at=0)
    volumes = [
        volume("local", "scratch", node="n3"),
        volume("local", "other", node="n1"),
        volume("nfs", "shared", node=None),
    ]
    found = plan("n3", state(pools={"local": Pool(name="local", created_at=0), "nfs": shared},
                             volumes=volumes))  # fmt: skip
    assert found.can_leave
    assert [(v.pool, v.name) for v in found.local_volumes] == [("local", "scratch")]


def pools(protection: str) -> dict[str, Pool]:
    return {"hci": Pool(name="hci", type="ardfs", protection=protection, created_at=0)}


def test_replicated_copies_are_made_again_elsewhere() -> None:
    found = plan(
        "n3",
        state(
            pools=pools("rf2"),
            ardfs_members=[
                ardfs("hci", "n1", "d1"),
                ardfs("hci", "n2", "d2"),
                ardfs("hci", "n3", "d3"),
            ],
            volumes=[
                volume("hci", "v", ("d1", "n1"), ("d3", "n3")),
                volume("hci", "w", ("d1", "n1")),
            ],
        ),
    )
    [pool] = found.ardfs
    assert found.can_leave and pool.outcome == "rebuilt" and pool.volumes == 1
    assert pool.disks == ["d3"] and pool.disks_left == 2 and pool.disks_needed == 2


def test_too_few_disks_left_blocks() -> None:
    found = plan(
        "n3",
        state(
            pools=pools("ec2+1"),
            ardfs_members=[
                ardfs("hci", "n1", "d1"),
                ardfs("hci", "n2", "d2"),
                ardfs("hci", "n3", "d3"),
            ],
            volumes=[volume("hci", "v", ("d1", "n1"), ("d2", "n2"), ("d3", "n3"))],
        ),
    )
    assert not found.can_leave and found.ardfs[0].outcome == "degraded"
    assert [b.kind for b in found.blockers] == ["ardfs"] and "needs 3" in refusal(found)


def test_rf1_data_is_copied_off_while_the_node_runs_and_lost_when_it_is_down() -> None:
    setup = dict(
        pools=pools("rf1"),
        ardfs_members=[ardfs("hci", "n1", "d1"), ardfs("hci", "n3", "d3")],
        volumes=[volume("hci", "v", ("d1", "n1"), ("d3", "n3"))],
    )
    running = plan("n3", state(**setup))
    assert running.can_leave and running.ardfs[0].outcome == "copied-off"
    down = plan("n3", state(live={"n1", "n2"}, **setup))
    assert down.can_leave and down.ardfs[0].outcome == "lost" and "lost" in down.ardfs[0].message


def test_a_node_without_disks_in_a_pool_is_not_listed_for_it() -> None:
    found = plan("n3", state(pools=pools("rf2"), ardfs_members=[ardfs("hci", "n3")]))
    assert found.ardfs == []


def test_drs_decisions_come_from_its_audit_entries_newest_first() -> None:
    entries = [
        {"time": 1, "node": "n1", "user": "drs", "method": "DRS", "target": "a", "reason": "r1"},
        {"time": 3, "node": "n2", "user": "admin", "method": "PUT", "target": "x"},
        {
            "time": 2,
            "node": "n2",
            "user": "drs",
            "method": "DRS",
            "target": "b",
            "reason": "r2",
            "task": "t",
            "vm_name": "vb",
            "source": "n1",
            "destination": "n3",
        },
    ]
    found = cluster.newest(cluster.drs_decisions(entries), 5)
    assert [d.vm for d in found] == ["b", "a"]
    assert (found[0].source, found[0].destination, found[0].task) == ("n1", "n3", "t")
    assert cluster.newest(found, 1) == found[:1]


def test_members_say_which_leads_in_etcdctls_hex() -> None:
    views = cluster.member_views(
        [member("b", id=0x2A), member("", True, id=7), member("a", id=9)], 0x2A
    )
    assert [(v.name, v.id, v.leader) for v in views] == [("a", "9", False), ("b", "2a", True),
                                                         ("", "7", False)]  # fmt: skip


def test_join_commands_carry_the_endpoints() -> None:
    found = cluster.instructions(["h1:2379", "h2:2379"])
    assert [c.kind for c in found.commands] == ["client", "etcd-capable"]
    assert "HERON_ETCD=h1:2379,h2:2379 ./install.sh" in found.commands[0].command
    assert "--etcd h1:2379,h2:2379 --etcd-member-ports" in found.commands[1].command
