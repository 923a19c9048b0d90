"""The agent grace: a node whose agent stops but whose watchdog answers keeps its HA VMs for
the grace; a node gone whole fails over after the lease TTL."""

import threading
from pathlib import Path

from fakes.configdb import FakeConfigDB

from heron.audit import AuditLog
from heron.configdb import keys
from heron.configdb.election import Election
from heron.ha.controller import FailoverController
from heron.ha.fence import (
    BEFORE_EXPIRY,
    agent_grace,
    fence_due,
    keeps_presence,
    read_beat,
    read_grace,
    write_beat,
    write_grace,
)
from heron.models.node import WATCHDOG_PRESENCE, Node, Watchdog
from heron.models.settings import ClusterSettings, HASettings
from heron.models.vm import VM, HAPolicy, PowerState, VMSpec
from heron.scheduler.inventory import Inventory

TTL = 3.0


def test_the_watchdog_renews_while_the_agent_is_within_its_grace() -> None:
    assert keeps_presence(now=100, beat=99, grace=30, ttl=TTL)
    assert keeps_presence(now=126.9, beat=100, grace=30, ttl=TTL)
    assert not keeps_presence(now=127, beat=100, grace=30, ttl=TTL)  # one TTL left to run
    assert not keeps_presence(now=100, beat=None, grace=30, ttl=TTL)  # no agent heard yet
    # A grace no longer than the TTL: the watchdog adds nothing to the agent's own lease.
    assert not keeps_presence(now=100, beat=100, grace=TTL, ttl=TTL)


def test_it_fences_before_the_later_lease_can_expire() -> None:
    assert not fence_due(now=102.4, heard=100, ttl=TTL)
    assert fence_due(now=100 + TTL - BEFORE_EXPIRY + 0.01, heard=100, ttl=TTL)
    assert not fence_due(now=1000, heard=None, ttl=TTL)


def test_an_agent_killed_for_good_is_fenced_at_its_grace_and_not_before() -> None:
    """Walk the watchdog's two rules through an agent that dies at t=100, grace 30 s: the
    last presence renewal comes just before t=127, and the fence half a second before the
    presence's lease could expire (t≈129.5), so at the grace less half a second."""
    beat, grace, presence = 100.0, 30.0, 100.0
    fenced_at = None
    now = 100.0
    while now < 200 and fenced_at is None:
        if keeps_presence(now, beat, grace, TTL):
            presence = now  # renewed (every 0.1 s here; at most every TTL/6 in herond)
        if fence_due(now, max(beat, presence), TTL):
            fenced_at = now
        now = round(now + 0.1, 1)
    assert fenced_at is not None and grace - 1.0 <= fenced_at - beat <= grace - BEFORE_EXPIRY


def test_the_grace_file_defaults_to_no_grace(tmp_path: Path) -> None:
    assert read_grace(tmp_path, TTL) == TTL
    write_grace(tmp_path, 45)
    assert read_grace(tmp_path, TTL) == 45


def test_beat_and_grace_written_at_once_from_two_threads(tmp_path: Path) -> None:
    """The lease thread writes the beat while the agent's loop writes the grace: neither
    write may fail (a shared temporary name once made one of them FileNotFoundError) and
    both files are whole afterwards."""
    failures: list[BaseException] = []

    def beats() -> None:
        try:
            for _ in range(2000):
                write_beat(tmp_path)
        except BaseException as error:
            failures.append(error)

    thread = threading.Thread(target=beats)
    thread.start()
    try:
        for grace in range(2000):
            write_grace(tmp_path, 10 + grace % 7)
    finally:
        thread.join()
    assert failures == []
    assert read_beat(tmp_path) is not None and read_grace(tmp_path, TTL) in range(10, 17)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fence.beat", "fence.grace"]


def node(name: str, features: tuple[str, ...] = (WATCHDOG_PRESENCE,)) -> Node:
    return Node(name=name, address=name, api_url="x", cpus=4, memory_mib=4096,
                accelerator="tcg", started_at=1, features=list(features))  # fmt: skip


def test_no_grace_until_every_node_honours_watchdogs() -> None:
    """During a rolling upgrade, a leader of the older release would restart an absent
    agent's VMs after the TTL while its watchdog still let them run."""
    settings = ClusterSettings(ha=HASettings(agent_grace=45))
    assert agent_grace(settings, [node("a"), node("b")], TTL) == 45
    assert agent_grace(settings, [node("a"), node("b", features=())], TTL) == TTL


async def test_the_leader_waits_while_the_watchdog_keeps_the_node_present(tmp_path: Path) -> None:
    db = FakeConfigDB()
    for name in ("a", "b"):
        await db.put(keys.node(name), node(name))
    vm = VM(id="v1", spec=VMSpec(name="v1", memory_mib=256, ha=HAPolicy(enabled=True)),
            node="b", power=PowerState.running, created_at=1)  # fmt: skip
    await db.put(keys.vm("v1"), vm)
    election = Election(db, keys.LEADER, "a")
    await election.campaign()
    now = [0.0]
    controller = FailoverController(
        await Inventory(db).ready(), AuditLog(tmp_path / "audit.jsonl", "a"), clock=lambda: now[0]
    )
    inventory = controller.inventory

    async def step_at(t: float) -> str:
        now[0] = t
        await controller.step(election)
        return (await db.get(VM, keys.vm("v1"))).value.node  # type: ignore[union-attr]

    # b's agent stops: its lease is gone, its watchdog's presence stays.
    await inventory.watchdogs.wait_for(
        await db.put(keys.watchdog("b"), Watchdog(node="b", started_at=1))
    )
    await inventory.nodes.wait_for(await db.delete(keys.node("b")))
    assert await step_at(0) == "b"
    assert await step_at(100) == "b"  # however long: the watchdog has not given up
    # Past the grace the watchdog fences and lets its presence go: the VM moves.
    await inventory.watchdogs.wait_for(await db.delete(keys.watchdog("b")))
    assert await step_at(101) == "b"  # the margin first
    assert await step_at(101 + controller.margin) == "a"
    await election.resign()
    await inventory.stop()
