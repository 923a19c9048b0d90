"""IPMI sensors (heron.monitor.collect.ipmi): the parser on `ipmitool sensor` texts, and the
poller's handling of its process with stand-in commands.

This machine has no BMC (no /dev/ipmi0), so no real ipmitool output can be captured here:
the texts below are stand-ins written to ipmitool 1.8's documented `sensor` format (name,
reading, unit, status, then six thresholds, '|'-separated; "na" where there is nothing), with
the kinds of lines real BMCs print: threshold sensors in each unit, one without a reading,
discrete state sensors, a percentage, and a temperature in Fahrenheit.
"""

from __future__ import annotations

import asyncio
import math
import stat
from pathlib import Path

import pytest
from support import eventually

from heron.monitor.collect.ipmi import IpmiPoller, no_bmc_reason, parse_sensors
from heron.monitor.series import Sample, labels_of
from heron.util.proc import is_zombie

SENSORS = """\
CPU1 Temp        | 43.000     | degrees C  | ok    | 0.000     | 0.000     | 0.000     | 95.000    | 100.000   | 100.000
System Temp      | 31.000     | degrees C  | ok    | -9.000    | -7.000    | -5.000    | 80.000    | 85.000    | 90.000
FAN1             | 3600.000   | RPM        | ok    | 300.000   | 500.000   | 700.000   | 25300.000 | 25400.000 | 25500.000
FAN2             | na         | RPM        | na    | 300.000   | 500.000   | 700.000   | 25300.000 | 25400.000 | 25500.000
FAN3             | 600.000    | RPM        | cr    | 300.000   | 500.000   | 700.000   | 25300.000 | 25400.000 | 25500.000
12V              | 12.192     | Volts      | nc    | 10.144    | 10.272    | 10.784    | 12.960    | 13.280    | 13.408
VBAT             | 3.024      | Volts      | ok    | 2.400     | 2.600     | 2.800     | 3.400     | 3.500     | 3.600
PS1 Status       | 0x1        | discrete   | 0x0100| na        | na        | na        | na        | na        | na
PS1 Input Power  | 140.000    | Watts      | ok    | na        | na        | na        | na        | na        | na
PS1 Current      | 0.600      | Amps       | ok    | na        | na        | na        | na        | na        | na
PS1 Fan Duty     | 35.000     | percent    | ok    | na        | na        | na        | na        | na        | na
Inlet Temp       | 77.000     | degrees F  | ok    | na        | na        | na        | 104.000   | 113.000   | na
Chassis Intru    | 0x0        | discrete   | 0x0000| na        | na        | na        | na        | na        | na
"""  # noqa: E501 (ipmitool's lines)


def value(samples: list[Sample], metric: str, **labels: str) -> float:
    found = [s.value for s in samples if s.name == metric and s.labels == labels_of(**labels)]
    assert len(found) == 1, (metric, labels, found)
    return found[0]


def test_readings_by_unit_with_id_and_name() -> None:
    samples = parse_sensors(SENSORS)
    assert value(samples, "ipmi_temperature_celsius", id="1", name="CPU1 Temp") == 43.0
    assert value(samples, "ipmi_fan_speed_rpm", id="3", name="FAN1") == 3600.0
    assert value(samples, "ipmi_voltage_volts", id="6", name="12V") == 12.192
    assert value(samples, "ipmi_power_watts", id="9", name="PS1 Input Power") == 140.0
    assert value(samples, "ipmi_current_amperes", id="10", name="PS1 Current") == 0.6
    fahrenheit = value(samples, "ipmi_temperature_celsius", id="12", name="Inlet Temp")
    assert math.isclose(fahrenheit, 25.0)
    # Another unit: the generic family, the unit as its type.
    duty = {"id": "11", "name": "PS1 Fan Duty", "type": "percent"}
    assert value(samples, "ipmi_sensor_value", **duty) == 35.0
    assert value(samples, "ipmi_sensor_state", **duty) == 0
    # No reading (FAN2: its state "na" too), discrete sensors: nothing.
    names = {dict(s.labels)["name"] for s in samples}
    assert not names & {"FAN2", "PS1 Status", "Chassis Intru"}


def test_threshold_sensors_states_as_the_ipmi_exporter_grades_them() -> None:
    samples = parse_sensors(SENSORS)
    assert value(samples, "ipmi_temperature_state", id="1", name="CPU1 Temp") == 0
    assert value(samples, "ipmi_voltage_state", id="6", name="12V") == 1  # nc
    assert value(samples, "ipmi_fan_speed_state", id="5", name="FAN3") == 2  # cr
    assert value(samples, "ipmi_power_state", id="9", name="PS1 Input Power") == 0
    assert value(samples, "ipmi_current_state", id="10", name="PS1 Current") == 0
    assert value(samples, "ipmi_temperature_state", id="12", name="Inlet Temp") == 0


def test_noise_is_not_a_sensor() -> None:
    text = "Unable to send command: Invalid argument\n\n| 1 | 2 | 3 | 4\n"
    assert parse_sensors(text) == []


def test_no_bmc_disables_the_poller(tmp_path: Path) -> None:
    devices = [tmp_path / "ipmi0", tmp_path / "ipmi" / "0"]
    reason = no_bmc_reason(devices)
    assert reason is not None and reason.startswith("no BMC: none of ")
    poller = IpmiPoller(devices=devices)
    assert poller.disabled == reason
    asyncio.run(poller.run())  # returns at once
    assert poller.samples() == []
    # This machine has none either: the default devices are absent.
    assert IpmiPoller().disabled is not None


def stand_in(directory: Path, body: str) -> list[str]:
    """A command standing in for `ipmitool sensor`: a shell script with `body`."""
    script = directory / "ipmitool"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return [str(script), "sensor"]


@pytest.fixture
def bmc(tmp_path: Path) -> list[Path]:
    """A device path that exists, so the poller is enabled with the stand-in command."""
    device = tmp_path / "ipmi0"
    device.touch()
    return [device]


async def test_a_reading_is_parsed_and_kept_with_its_time(tmp_path: Path, bmc: list[Path]) -> None:
    (tmp_path / "out.txt").write_text(SENSORS)
    command = stand_in(tmp_path, f"cat {tmp_path / 'out.txt'}\n")
    poller = IpmiPoller(command, devices=bmc, timeout=30, clock=lambda: 1234.5)
    assert poller.disabled is None
    assert await poller.poll()
    assert poller.reading is not None and poller.reading.at == 1234.5
    assert value(poller.samples(), "ipmi_fan_speed_rpm", id="3", name="FAN1") == 3600.0
    assert poller.error is None


async def test_a_stalled_read_is_killed_and_the_last_reading_kept(
    tmp_path: Path, bmc: list[Path]
) -> None:
    (tmp_path / "out.txt").write_text(SENSORS)
    good = stand_in(tmp_path, f"cat {tmp_path / 'out.txt'}\n")
    poller = IpmiPoller(good, devices=bmc, timeout=1.0, clock=lambda: 100.0)
    assert await poller.poll()
    kept = poller.samples()

    # Now the BMC stalls: the stand-in starts a child that would sleep for ten minutes,
    # writes its pid, and waits for it. Both go with the process group.
    pidfile = tmp_path / "child.pid"
    poller.command = stand_in(tmp_path, f"sleep 600 & echo $! > {pidfile}\nwait\n")
    started = asyncio.create_task(poller.poll())

    async def child_pid() -> int | None:
        text = pidfile.read_text().strip() if pidfile.exists() else ""
        return int(text) if text else None

    child = await eventually(child_pid, 30, "the stand-in to start its child")
    # One at a time: a poll while that one runs starts nothing.
    assert not await poller.poll()
    assert not await started
    assert poller.error is not None and "no reading within 1 s" in poller.error
    assert poller.samples() == kept and poller.reading is not None
    assert poller.reading.at == 100.0

    async def child_gone() -> bool:
        return is_zombie(child)  # gone, or dead and waiting for its reaper

    await eventually(child_gone, 30, "the stand-in's child to be killed")


async def test_a_failing_command_keeps_the_last_reading(tmp_path: Path, bmc: list[Path]) -> None:
    (tmp_path / "out.txt").write_text(SENSORS)
    poller = IpmiPoller(stand_in(tmp_path, f"cat {tmp_path / 'out.txt'}\n"), devices=bmc)
    assert await poller.poll()
    poller.command = stand_in(tmp_path, "echo 'Could not open device' >&2\nexit 1\n")
    assert not await poller.poll()
    assert poller.error == f"{poller.command[0]} exited with 1: Could not open device"
    assert poller.samples()
    # Some sensors unreadable, the rest printed: ipmitool exits 1, and that is a reading.
    poller.command = stand_in(tmp_path, f"cat {tmp_path / 'out.txt'}\nexit 1\n")
    assert await poller.poll() and poller.error is None


async def test_the_poller_runs_in_the_background_until_cancelled(
    tmp_path: Path, bmc: list[Path]
) -> None:
    (tmp_path / "out.txt").write_text(SENSORS)
    runs = tmp_path / "runs"
    command = stand_in(tmp_path, f"echo run >> {runs}\ncat {tmp_path / 'out.txt'}\n")
    poller = IpmiPoller(command, devices=bmc, interval=0.05, timeout=30)
    task = asyncio.create_task(poller.run())

    async def polled_twice() -> bool:
        return runs.exists() and len(runs.read_text().splitlines()) >= 2

    await eventually(polled_twice, 30, "the poller to read the sensors twice")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert poller.reading is not None and poller.error is None
