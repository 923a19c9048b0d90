"""Heron's OpenFlow flows and meters on an Open vSwitch bridge (ovs_flows builds them), put
in place with ovs-ofctl: meters first (the flows name them), then every flow of Heron's
cookie replaced in one bundle (a transaction: never a moment without a filtered port's
rules), then the meters no flow uses any more deleted. A filtered port is taken out of
NORMAL's floods (OpenFlow's NO_FLOOD, which ovs-vswitchd does not keep across a restart):
Heron's flows deliver it what it may receive.

A bridge records a fingerprint of what was put there and of what the switch then showed
(external_ids:heron-flows): a realise that wants the same and finds the same writes nothing,
whichever agent process made them. Flows lost (ovs-vswitchd keeps them in memory only) or
changed behind Heron's back do not match it, and are put back.
"""

import subprocess

from heron.network.ovs_flows import (
    COOKIE,
    BridgeFlows,
    Meter,
    fingerprint,
    heron_flows,
    meter_changes,
    parse_meters,
    parse_no_flood,
    replacement,
)
from heron.network.ovs_runtime import OvsError, OvsRuntime

OFCTL_TIMEOUT = 30
# Bundles are OpenFlow 1.4; meters need 1.3 (Open vSwitch enables up to 1.5 by default).
PROTOCOL = "OpenFlow14"
# A port's NO_FLOOD is OpenFlow 1.0's only (1.1 dropped it: a 1.4 mod-port ignores it).
NO_FLOOD_PROTOCOL = "--protocols=OpenFlow10"


class BridgeFilter:
    """Heron's flows and meters on the bridges of one Open vSwitch runtime."""

    def __init__(self, runtime: OvsRuntime) -> None:
        self.runtime = runtime

    def apply(
        self, bridge: str, wanted: BridgeFlows, recorded: str | None
    ) -> tuple[list[str], str | None]:
        """Make Heron's flows and meters on `bridge` those of `wanted`: the problems, and the
        fingerprint to record on the bridge if it is not `recorded` (ovs_flows.fingerprint;
        None: nothing to record)."""
        try:
            return [], self._apply(bridge, wanted, recorded)
        except OvsError as exc:
            return [f"bridge {bridge}: security groups and rate limits not applied: {exc}"], None

    def _apply(self, bridge: str, wanted: BridgeFlows, recorded: str | None) -> str | None:
        meters = self._meters(bridge)
        blocked = self._no_flood(bridge)
        if recorded == fingerprint(wanted, self._heron_flows(bridge), meters, blocked):
            return None
        # Out of NORMAL's floods before the flows that deliver floods to it are in: a
        # filtered port misses a flood a moment rather than see one unfiltered.
        for number in wanted.no_flood:
            if number not in blocked:
                self._ofctl(bridge, NO_FLOOD_PROTOCOL, "mod-port", str(number), "no-flood")
        add, modify, delete = meter_changes(wanted.meters, meters)
        for meter in add:
            self._ofctl(bridge, "add-meter", meter.spec())
        for meter in modify:
            self._ofctl(bridge, "mod-meter", meter.spec())
        self._ofctl(bridge, "--bundle", "add-flows", "-", stdin=replacement(wanted))
        for meter_id in delete:
            self._ofctl(bridge, "del-meter", f"meter={meter_id}")
        for number in wanted.flood:
            if number in blocked:
                self._ofctl(bridge, NO_FLOOD_PROTOCOL, "mod-port", str(number), "flood")
        return fingerprint(
            wanted, self._heron_flows(bridge), self._meters(bridge), self._no_flood(bridge)
        )

    def _no_flood(self, bridge: str) -> set[int]:
        return parse_no_flood(self._ofctl(bridge, NO_FLOOD_PROTOCOL, "dump-ports-desc"))

    def _heron_flows(self, bridge: str) -> list[str]:
        return heron_flows(
            self._ofctl(bridge, "--no-stats", "dump-flows", f"cookie={COOKIE:#x}/-1")
        )

    def _meters(self, bridge: str) -> dict[int, Meter]:
        return parse_meters(self._ofctl(bridge, "dump-meters"))

    def _ofctl(self, bridge: str, *args: str, stdin: str | None = None) -> str:
        # The target comes last but for add-flows' file and a meter's spec, which follow it.
        options = [a for a in args if a.startswith("--")]
        command = [a for a in args if not a.startswith("--")]
        verb, rest = command[0], command[1:]
        target = self.runtime.ofctl_target(bridge)
        if not any(o.startswith("--protocols=") for o in options):
            options.insert(0, f"--protocols={PROTOCOL}")
        full = ["ovs-ofctl", *options, verb, target, *rest]
        try:
            done = subprocess.run(
                full, input=stdin, capture_output=True, text=True, timeout=OFCTL_TIMEOUT
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise OvsError(f"ovs-ofctl {verb} failed: {exc}") from exc
        if done.returncode != 0:
            raise OvsError(f"ovs-ofctl {verb}: {done.stderr.strip() or done.returncode}")
        return done.stdout
