"""Heron's OpenFlow flows and meters on an Open vSwitch bridge (ovs_flows builds them), put
in place with ovs-ofctl: meters first (the flows name them), then every flow of Heron's
cookie replaced in one bundle (a transaction: never a moment without a filtered port's
rules), then the meters no flow uses any more deleted.

A bridge whose flows and meters are what was last put there is not touched: its flows are
read back (ovs-vswitchd keeps them in memory only: after it restarts, they are put back).
"""

import subprocess
from dataclasses import dataclass, field

from heron.network.ovs_flows import (
    COOKIE,
    BridgeFlows,
    Meter,
    heron_flows,
    meter_changes,
    parse_meters,
    replacement,
)
from heron.network.ovs_runtime import OvsError, OvsRuntime

OFCTL_TIMEOUT = 30
# Bundles are OpenFlow 1.4; meters need 1.3 (Open vSwitch enables up to 1.5 by default).
PROTOCOL = "OpenFlow14"


@dataclass
class _Applied:
    flows: BridgeFlows
    dump: list[str] = field(default_factory=list)


class BridgeFilter:
    """Heron's flows and meters on the bridges of one Open vSwitch runtime."""

    def __init__(self, runtime: OvsRuntime) -> None:
        self.runtime = runtime
        self._applied: dict[str, _Applied] = {}

    def apply(self, bridge: str, wanted: BridgeFlows) -> list[str]:
        """Make Heron's flows and meters on `bridge` those of `wanted`; the problems."""
        try:
            self._apply(bridge, wanted)
        except OvsError as exc:
            self._applied.pop(bridge, None)
            return [f"bridge {bridge}: security groups and rate limits not applied: {exc}"]
        return []

    def _apply(self, bridge: str, wanted: BridgeFlows) -> None:
        dump = self._heron_flows(bridge)
        meters = self._meters(bridge)
        last = self._applied.get(bridge)
        in_sync = {m.id: m for m in wanted.meters} == meters
        if last is not None and last.flows == wanted and last.dump == dump and in_sync:
            return
        if not wanted.flows and not dump and not meters:
            self._applied[bridge] = _Applied(wanted, dump)
            return
        add, modify, delete = meter_changes(wanted.meters, meters)
        for meter in add:
            self._ofctl(bridge, "add-meter", meter.spec())
        for meter in modify:
            self._ofctl(bridge, "mod-meter", meter.spec())
        self._ofctl(bridge, "--bundle", "add-flows", "-", stdin=replacement(wanted))
        for meter_id in delete:
            self._ofctl(bridge, "del-meter", f"meter={meter_id}")
        self._applied[bridge] = _Applied(wanted, self._heron_flows(bridge))

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
        full = ["ovs-ofctl", "-O", PROTOCOL, *options, verb, target, *rest]
        try:
            done = subprocess.run(
                full, input=stdin, capture_output=True, text=True, timeout=OFCTL_TIMEOUT
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise OvsError(f"ovs-ofctl {verb} failed: {exc}") from exc
        if done.returncode != 0:
            raise OvsError(f"ovs-ofctl {verb}: {done.stderr.strip() or done.returncode}")
        return done.stdout
