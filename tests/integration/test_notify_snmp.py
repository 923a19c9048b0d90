"""The SNMP channel against a real net-snmp snmptrapd on a free UDP port with a
configuration of its own: v2c and v3 (authPriv, authNoPriv) traps and informs, decoded with
the HERON-MIB Heron ships, asserted by the notification's and the objects' names. A v3 trap
is accepted only with the engine ID derived from the cluster id; an inform returns once
acknowledged, and fails within the timeout when nobody answers. The MIB passes smilint.

Debian ships no IETF MIBs (non-free): tests/integration/mibs holds stand-ins for the three
base modules HERON-MIB imports, with only what it uses."""

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from support import wait_for

from heron.models.alerts import Channel, Severity, SnmpSettings
from heron.monitor import notify
from heron.monitor.notify import Context, Notice, NotifyError
from heron.util.ports import free_port

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
BASE_MIBS = HERE / "mibs"
HERON_MIBS = Path(str(resources.files("heron.monitor.notify")))
CLUSTER_ID = "c0ffee00-0000-4000-8000-000000000003"
COMMUNITY = "heron-community"
USER, AUTH_KEY, PRIV_KEY = "heronops", "auth-pass-1", "priv-pass-1"
PLAIN_USER = "heronplain"  # authNoPriv
STRONG_USER = "heronstrong"  # SHA-512 and AES-256
SNMPTRAPD = shutil.which("snmptrapd") or "/usr/sbin/snmptrapd"


@dataclass
class Trap:
    version: str
    security: str
    binds: dict[str, str]

    @property
    def oid(self) -> str:
        return self.binds["SNMPv2-MIB::snmpTrapOID.0"]


@dataclass
class Trapd:
    port: int
    log: Path

    def traps(self) -> list[Trap]:
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            if not line.startswith("HERON "):
                continue
            head, *binds = line.split("\t")
            _, version, security = head.split(" ", 2)
            pairs = dict(_bind(b) for b in binds if " = " in b)
            found.append(Trap(version, security, pairs))
        return found


def _bind(text: str) -> tuple[str, str]:
    name, value = text.split(" = ", 1)
    # "STRING: node node2 is down" -> "node node2 is down"; "OID: X" -> "X"
    value = re.sub(r"^[A-Za-z0-9 -]+: ", "", value, count=1)
    # SNMPv2-MIB is not among the stand-ins: snmpTrapOID.0 comes by number.
    if name in ("SNMPv2-SMI::internet.6.3.1.1.4.1.0", "iso.3.6.1.6.3.1.1.4.1.0"):
        name = "SNMPv2-MIB::snmpTrapOID.0"
    return name, value


@pytest.fixture(scope="module")
def trapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trapd]:
    directory = tmp_path_factory.mktemp("snmptrapd")
    port = free_port()
    engine = notify.engine_id_hex(CLUSTER_ID)
    (directory / "snmptrapd.conf").write_text(
        "\n".join(
            [
                f"authCommunity log {COMMUNITY}",
                # Traps: the sender is authoritative, its users are keyed on its engine ID.
                f"createUser -e {engine} {USER} SHA {AUTH_KEY} AES {PRIV_KEY}",
                f"createUser -e {engine} {PLAIN_USER} SHA-256 {AUTH_KEY}",
                f"createUser -e {engine} {STRONG_USER} SHA-512 {AUTH_KEY} AES-256 {PRIV_KEY}",
                # Informs: snmptrapd is authoritative, its users are its own engine's.
                f"createUser {USER} SHA {AUTH_KEY} AES {PRIV_KEY}",
                f"authUser log {USER} priv",
                f"authUser log {PLAIN_USER} auth",
                f"authUser log {STRONG_USER} priv",
                "",
            ]
        )
    )
    log = directory / "traps.log"
    env = dict(os.environ, SNMP_PERSISTENT_DIR=str(directory / "persist"), MIBS="", MIBDIRS="")
    command = [
        SNMPTRAPD,
        "-f",
        "-C",
        "-c",
        str(directory / "snmptrapd.conf"),
        "-n",
        "-X",
        "-Lf",
        str(log),
        "-M",
        f"{BASE_MIBS}:{HERON_MIBS}",
        "-m",
        "HERON-MIB",
        "-F",
        "HERON %s %P\t%v\n",
        f"udp:127.0.0.1:{port}",
        f"udp6:[::1]:{port}",
    ]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    try:
        wait_for(
            lambda: log.exists() and "NET-SNMP version" in log.read_text(),
            10,
            "snmptrapd to start",
        )
        yield Trapd(port, log)
    finally:
        process.terminate()
        process.wait(timeout=10)
        print(log.read_text())


def context(timeout: float = 10.0, cluster_id: str = CLUSTER_ID) -> Context:
    return Context(cluster_id=cluster_id, cluster_name="prod", timeout=timeout)


def channel(port: int, **changes: Any) -> Channel:
    settings = SnmpSettings(host="127.0.0.1", port=port, community=COMMUNITY)
    return Channel(name="nms", settings=settings.model_copy(update=changes))


def v3(port: int, **changes: Any) -> Channel:
    settings: dict[str, Any] = {
        "version": "v3",
        "community": None,
        "user": USER,
        "auth_protocol": "SHA",
        "auth_key": AUTH_KEY,
        "priv_protocol": "AES",
        "priv_key": PRIV_KEY,
    }
    return channel(port, **(settings | changes))


def notice(alert_id: str, rule: str = "node-down", **changes: Any) -> Notice:
    fields: dict[str, Any] = {
        "alert_id": alert_id,
        "rule": rule,
        "severity": Severity.critical,
        "state": "firing",
        "summary": "node node2 is down",
        "labels": {"node": "node2"},
        "started_at": 1_796_445_012.0,  # 2026-12-05 04:30:12 UTC
        "resolved_at": None,
        "value": None,
        "cluster": "prod",
        "url": "https://prod.example:8006/#/alerts/" + alert_id,
    }
    fields.update(changes)
    return Notice(**fields)


def arrived(trapd: Trapd, alert_id: str) -> list[Trap]:
    return wait_for(
        lambda: [t for t in trapd.traps() if t.binds.get("HERON-MIB::heronAlertId.0") == alert_id],
        10,
        f"snmptrapd to log the notification of {alert_id}",
    )


async def test_a_v2c_trap_is_decoded_by_name_with_the_shipped_mib(trapd: Trapd) -> None:
    await notify.deliver(channel(trapd.port), [notice("v2c-1")], context())
    [trap] = arrived(trapd, "v2c-1")
    assert trap.version == "1"  # snmptrapd's number for v2c
    assert COMMUNITY in trap.security
    assert trap.oid == "HERON-MIB::heronNodeDown"
    binds = trap.binds
    assert binds["HERON-MIB::heronAlertRule.0"] == "node-down"
    assert binds["HERON-MIB::heronAlertSeverity.0"] == "critical(3)"
    assert binds["HERON-MIB::heronAlertState.0"] == "firing(1)"
    assert binds["HERON-MIB::heronAlertSummary.0"] == "node node2 is down"
    assert binds["HERON-MIB::heronAlertLabels.0"] == "node=node2"
    assert binds["HERON-MIB::heronAlertStartedAt.0"] == "2026-12-5,4:30:12.0,+0:0"
    assert binds["HERON-MIB::heronClusterName.0"] == "prod"
    assert binds["HERON-MIB::heronAlertUrl.0"] == "https://prod.example:8006/#/alerts/v2c-1"
    assert "HERON-MIB::heronAlertResolvedAt.0" not in binds


async def test_a_trap_goes_to_an_ipv6_address(trapd: Trapd) -> None:
    await notify.deliver(channel(trapd.port, host="::1"), [notice("v6-1")], context())
    [trap] = arrived(trapd, "v6-1")
    assert trap.oid == "HERON-MIB::heronNodeDown"


async def test_each_notice_is_one_trap_and_a_custom_rule_resolves_generically(
    trapd: Trapd,
) -> None:
    notices = [
        notice("many-1", rule="vm-crashed", summary="VM web1 crashed", labels={"vm": "web1"}),
        notice(
            "many-2",
            rule="cpu-busy",
            severity=Severity.warning,
            summary="node1 CPU busy",
            state="resolved",
            resolved_at=1_796_445_072.0,
            value=0.93,
        ),
    ]
    await notify.deliver(channel(trapd.port), notices, context())
    [crashed] = arrived(trapd, "many-1")
    [resolved] = arrived(trapd, "many-2")
    assert crashed.oid == "HERON-MIB::heronVmCrashed"
    assert resolved.oid == "HERON-MIB::heronAlertResolved"
    assert resolved.binds["HERON-MIB::heronAlertState.0"] == "resolved(2)"
    assert resolved.binds["HERON-MIB::heronAlertResolvedAt.0"] == "2026-12-5,4:31:12.0,+0:0"
    assert resolved.binds["HERON-MIB::heronAlertValue.0"] == "0.93"


async def test_a_v2c_inform_returns_once_acknowledged(trapd: Trapd) -> None:
    await notify.deliver(channel(trapd.port, inform=True), [notice("inform-1")], context())
    # Acknowledged means received: it is in the log (once) already or about to be.
    [trap] = arrived(trapd, "inform-1")
    assert trap.oid == "HERON-MIB::heronNodeDown"


async def test_v3_traps_authpriv_and_authnopriv_carry_the_clusters_engine_id(
    trapd: Trapd,
) -> None:
    await notify.deliver(v3(trapd.port), [notice("v3-priv")], context())
    [trap] = arrived(trapd, "v3-priv")
    assert trap.version == "3" and USER in trap.security
    assert trap.oid == "HERON-MIB::heronNodeDown"
    plain = channel(
        trapd.port,
        version="v3",
        community=None,
        user=PLAIN_USER,
        auth_protocol="SHA256",
        auth_key=AUTH_KEY,
    )
    await notify.deliver(plain, [notice("v3-auth", rule="etcd-member-down")], context())
    [trap] = arrived(trapd, "v3-auth")
    assert trap.oid == "HERON-MIB::heronEtcdMemberDown"
    # Another cluster's engine ID has no user there: the trap is dropped. A later trap of
    # this cluster arriving shows the other was processed (and refused) before it.
    await notify.deliver(v3(trapd.port), [notice("v3-other")], context(cluster_id="other"))
    await notify.deliver(v3(trapd.port), [notice("v3-after")], context())
    arrived(trapd, "v3-after")
    assert not [t for t in trapd.traps() if "v3-other" in t.binds.values()]


async def test_a_v3_trap_with_sha512_and_aes256_is_understood_by_net_snmp(
    trapd: Trapd,
) -> None:
    strong = v3(trapd.port, user=STRONG_USER, auth_protocol="SHA512", priv_protocol="AES256")
    await notify.deliver(strong, [notice("v3-strong")], context())
    [trap] = arrived(trapd, "v3-strong")
    assert STRONG_USER in trap.security


async def test_a_v3_inform_is_acknowledged(trapd: Trapd) -> None:
    await notify.deliver(v3(trapd.port, inform=True), [notice("v3-inform")], context())
    [trap] = arrived(trapd, "v3-inform")
    assert trap.version == "3"


async def test_an_inform_the_receiver_refuses_fails(trapd: Trapd) -> None:
    # A community snmptrapd does not know: it drops the inform, nothing acknowledges it.
    stranger = channel(trapd.port, inform=True, community="not-this-one")
    # (Under load the bound on the whole delivery may end it first: the same failure.)
    with pytest.raises(
        NotifyError, match=r"no acknowledgement of an SNMP inform|not delivered within"
    ):
        await notify.deliver(stranger, [notice("refused-1")], context(timeout=1.5))
    # A v3 user with the wrong key: snmptrapd reports the wrong digest.
    wrong = v3(trapd.port, inform=True, auth_key="not-the-key")
    with pytest.raises(
        NotifyError, match=r"SNMP inform to 127\.0\.0\.1:\d+ failed: Wrong SNMP PDU"
    ):
        await notify.deliver(wrong, [notice("refused-2")], context(timeout=3))
    assert not [
        t
        for t in trapd.traps()
        if t.binds.get("HERON-MIB::heronAlertId.0", "").startswith("refused")
    ]


async def test_an_inform_nobody_answers_fails_within_the_timeout() -> None:
    nobody = free_port()
    with pytest.raises(NotifyError) as failed:
        await notify.deliver(channel(nobody, inform=True), [notice("lost")], context(timeout=1.5))
    assert str(failed.value) == (
        f"channel nms (snmp): no acknowledgement of an SNMP inform from 127.0.0.1:{nobody} "
        "within 1.5 s"
    )


def test_the_mib_passes_smilint() -> None:
    smilint = shutil.which("smilint")
    if smilint is None:
        pytest.skip("smilint (Debian package smitools) is not installed")
    preload = [f"-p{BASE_MIBS / name}.txt" for name in ("SNMPv2-SMI", "SNMPv2-TC", "SNMPv2-CONF")]
    result = subprocess.run(
        [smilint, "-l", "4", *preload, str(HERON_MIBS / "HERON-MIB.txt")],
        capture_output=True,
        text=True,
        check=False,
    )
    problems = [line for line in result.stderr.splitlines() if "HERON-MIB" in line]
    assert problems == []
    assert result.returncode == 0, result.stderr


def test_snmptranslate_finds_every_notification_type_at_the_codes_oid() -> None:
    snmp = notify.snmp
    mibs = ["-M", f"{BASE_MIBS}:{HERON_MIBS}", "-m", "HERON-MIB"]
    oids = {name: (*snmp.NOTIFICATIONS, number) for name, number in snmp.KINDS.values()}
    oids["heronAlertFiring"] = (*snmp.NOTIFICATIONS, snmp.ALERT_FIRING)
    oids["heronAlertResolved"] = (*snmp.NOTIFICATIONS, snmp.ALERT_RESOLVED)
    for name, oid in oids.items():
        result = subprocess.run(
            ["snmptranslate", *mibs, "-On", f"HERON-MIB::{name}"],
            capture_output=True,
            text=True,
            check=True,
            env=dict(os.environ, MIBS="", MIBDIRS=""),
        )
        assert result.stdout.strip() == "." + ".".join(map(str, oid)), name
