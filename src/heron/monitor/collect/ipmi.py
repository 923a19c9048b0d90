"""The node's hardware sensors through its BMC: `ipmitool sensor`, polled in the background.

A BMC answers slowly, and a sensor read can stall for minutes, so the poller runs at most one
ipmitool at a time, kills it (its whole process group) when it overruns `timeout`, and keeps
the last good reading with its time: a caller asks for `samples()` whenever it likes, and
never waits for the BMC. Where the node has no BMC (no /dev/ipmi0, /dev/ipmi/0 or
/dev/ipmidev/0: the kernel's IPMI driver found none) or no ipmitool, the poller is disabled
and says why.

`ipmitool sensor` prints one line per sensor, ten columns separated by '|':

    CPU1 Temp        | 43.000     | degrees C  | ok    | 0.000 | 0.000 | 0.000 | 95.000 | ...

name, reading ("na" when there is none), unit ("discrete" for state sensors, whose reading
and status are bit masks), status (ok, nc: non-critical, cr: critical, nr: non-recoverable,
na), then the six thresholds. Names follow the IPMI exporter's (which reads FreeIPMI):
`ipmi_temperature_celsius{id,name}`, `ipmi_temperature_state{id,name}` and so on. `id` here
is the sensor's place in ipmitool's listing, which follows the BMC's sensor repository
(ipmitool does not print record ids), so it stays while the repository does and tells apart
sensors of one name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from heron.monitor.series import Sample, labels_of

log = logging.getLogger(__name__)

BMC_DEVICES = (Path("/dev/ipmi0"), Path("/dev/ipmi/0"), Path("/dev/ipmidev/0"))
COMMAND = ("ipmitool", "sensor")
INTERVAL = 60.0
TIMEOUT = 30.0

# Unit -> the reading's metric and its state's, as the IPMI exporter names them.
UNITS: dict[str, tuple[str, str]] = {
    "degrees C": ("ipmi_temperature_celsius", "ipmi_temperature_state"),
    "RPM": ("ipmi_fan_speed_rpm", "ipmi_fan_speed_state"),
    "Volts": ("ipmi_voltage_volts", "ipmi_voltage_state"),
    "Amps": ("ipmi_current_amperes", "ipmi_current_state"),
    "Watts": ("ipmi_power_watts", "ipmi_power_state"),
}
STATES = {"ok": 0, "nc": 1, "cr": 2, "nr": 2}


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def parse_sensors(text: str) -> list[Sample]:
    """The samples of `ipmitool sensor` output. A threshold sensor in a unit the IPMI
    exporter has a family for gives its reading (Fahrenheit converted) and its state as that
    family (`ipmi_temperature_celsius`, `ipmi_temperature_state`); one in another unit
    (percent, ...) gives `ipmi_sensor_value` and `ipmi_sensor_state` with `type`: the unit,
    as ipmitool prints no sensor type. Discrete sensors (their reading is a bit mask whose
    meaning depends on the sensor type) and readings of "na" (absent, not powered) give
    nothing, nor does a status of "na"."""
    samples = []
    for index, line in enumerate(text.splitlines(), start=1):
        columns = [c.strip() for c in line.split("|")]
        if len(columns) < 4 or not columns[0]:
            continue
        name, reading, unit, status = columns[:4]
        if unit in ("", "discrete"):
            continue
        value = _number(reading)
        if unit == "degrees F" and value is not None:
            unit, value = "degrees C", (value - 32) * 5 / 9
        labels = labels_of(id=str(index), name=name)
        if unit in UNITS:
            metric, state = UNITS[unit]
        else:
            labels = labels_of(id=str(index), name=name, type=unit)
            metric, state = "ipmi_sensor_value", "ipmi_sensor_state"
        if value is not None:
            samples.append(Sample(metric, labels, value))
        if status in STATES:
            samples.append(Sample(state, labels, STATES[status]))
    return samples


@dataclass(frozen=True)
class Reading:
    samples: list[Sample]
    at: float  # when ipmitool returned it (time.time())


def no_bmc_reason(devices: Sequence[Path] = BMC_DEVICES, command: str = COMMAND[0]) -> str | None:
    """Why sensors cannot be read here, or None when they can be tried."""
    if not any(device.exists() for device in devices):
        return "no BMC: none of " + ", ".join(str(d) for d in devices) + " exists"
    if shutil.which(command) is None:
        return f"{command} is not installed"
    return None


class IpmiPoller:
    """Reads the sensors every `interval` seconds, one process at a time, each given
    `timeout` seconds before it is killed. `samples()` is the last good reading."""

    def __init__(
        self,
        command: Sequence[str] = COMMAND,
        *,
        interval: float = INTERVAL,
        timeout: float = TIMEOUT,
        devices: Sequence[Path] = BMC_DEVICES,
        clock: Callable[[], float] = time.time,
    ):
        self.command = list(command)
        self.interval = interval
        self.timeout = timeout
        self.clock = clock
        self.disabled: str | None = no_bmc_reason(devices, self.command[0])
        self.reading: Reading | None = None
        self.error: str | None = None  # what went wrong with the last poll, if it did
        self._lock = asyncio.Lock()

    def samples(self) -> list[Sample]:
        return list(self.reading.samples) if self.reading else []

    async def run(self) -> None:
        """Poll until cancelled; returns at once when disabled."""
        if self.disabled:
            log.info("IPMI sensors are not read: %s", self.disabled)
            return
        while True:
            await self.poll()
            await asyncio.sleep(self.interval)  # pacing: the next read is due then

    async def poll(self) -> bool:
        """Run ipmitool once, unless one runs already; True when a reading was taken.

        A process that overruns the timeout is killed, and this returns only once it is
        gone (SIGKILL takes effect when its system call returns): never two at a time.
        """
        if self._lock.locked():
            return False
        async with self._lock:
            try:
                output = await self._run()
            except (OSError, RuntimeError) as exc:
                self.error = str(exc)
                log.warning("reading IPMI sensors failed: %s", exc)
                return False
            samples = parse_sensors(output)
            if not samples:
                self.error = "ipmitool printed no sensor readings"
                return False
            self.reading = Reading(samples, self.clock())
            self.error = None
            return True

    async def _run(self) -> str:
        proc = await asyncio.create_subprocess_exec(
            *self.command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group: killed with whatever it starts
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            raise RuntimeError(
                f"{self.command[0]} gave no reading within {self.timeout:g} s"
            ) from None
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            raise
        text = out.decode(errors="replace")
        # ipmitool exits non-zero when some sensor could not be read, having printed the
        # others: those are a reading all the same.
        if proc.returncode != 0 and not parse_sensors(text):
            said = err.decode(errors="replace").strip().splitlines()
            raise RuntimeError(
                f"{self.command[0]} exited with {proc.returncode}: {said[-1] if said else ''}"
            )
        return text
