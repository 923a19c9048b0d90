"""Every metric Heron exposes: its name, kind and help, the one list the exposition
(`/metrics`), the rate conversion and the collectors' tests read.

Names are those of node_exporter (node_*), the libvirt exporter (libvirt_*) and the IPMI
exporter (ipmi_*) wherever Heron measures the same thing in the same unit, so dashboards and
alert rules written for them read Heron's series unchanged. Where Heron measures something
they do not, or sums what they keep apart, the help says so. A sample whose name is not here
is a bug (tests/unit/test_monitor_catalog.py checks every collector's output).

Labels: node metrics carry none of their own beyond `mode`, `device`, `mountpoint`/`fstype`
(the gatherer adds `node`); VM metrics carry `vm` (its uuid), per disk or NIC also
`target_device` (`heron_vm_info` also `name`, the VM's); IPMI sensors `id` and `name`.
"""

from __future__ import annotations

from heron.monitor.collect.services import SERVICE_METRICS
from heron.monitor.collect.storage import STORAGE_METRICS
from heron.monitor.collect.switch import SWITCH_METRICS
from heron.monitor.series import Kind, Metric

METRICS: dict[str, Metric] = {}


def _add(name: str, kind: Kind, help: str) -> None:
    assert name not in METRICS, name
    METRICS[name] = Metric(name, kind, help)


# -- node: CPU, load, memory, pressure (/proc) ------------------------------------------------

_add(
    "node_cpu_seconds_total",
    "counter",
    "Seconds the node's CPUs spent in each mode, summed over all CPUs (/proc/stat; "
    "node_exporter keeps one series per CPU, sum by mode to compare).",
)
for _minutes in (1, 5, 15):
    _add(f"node_load{_minutes}", "gauge", f"{_minutes}-minute load average (/proc/loadavg).")
for _field, _help in (
    ("MemTotal", "Usable RAM"),
    ("MemAvailable", "RAM available for new work without swapping (the kernel's estimate)"),
    ("MemFree", "RAM not used at all"),
    ("Buffers", "RAM holding block device buffers"),
    ("Cached", "RAM holding the page cache"),
    ("SwapTotal", "Swap space"),
    ("SwapFree", "Swap space not used"),
):
    _add(f"node_memory_{_field}_bytes", "gauge", f"{_help}, in bytes (/proc/meminfo {_field}).")
_add(
    "node_pressure_cpu_waiting_seconds_total",
    "counter",
    "Seconds in which some runnable task waited for a CPU (PSI, /proc/pressure/cpu 'some').",
)
for _resource in ("memory", "io"):
    _add(
        f"node_pressure_{_resource}_waiting_seconds_total",
        "counter",
        f"Seconds in which some task waited for {_resource} "
        f"(PSI, /proc/pressure/{_resource} 'some').",
    )
    _add(
        f"node_pressure_{_resource}_stalled_seconds_total",
        "counter",
        f"Seconds in which all non-idle tasks waited for {_resource} at once "
        f"(PSI, /proc/pressure/{_resource} 'full').",
    )

# -- node: disks (/proc/diskstats), whole physical devices only -------------------------------

for _name, _help in (
    ("reads_completed_total", "Reads completed"),
    ("writes_completed_total", "Writes completed"),
    ("read_bytes_total", "Bytes read"),
    ("written_bytes_total", "Bytes written"),
    ("read_time_seconds_total", "Seconds spent by all reads (their latency summed)"),
    ("write_time_seconds_total", "Seconds spent by all writes (their latency summed)"),
    ("io_time_seconds_total", "Seconds the device had I/O in flight (its rate: utilisation)"),
):
    _add(f"node_disk_{_name}", "counter", f"{_help}, per disk (/proc/diskstats).")

# -- node: network interfaces (/proc/net/dev), VM taps left to the VMs ------------------------

for _direction, _verb in (("receive", "received"), ("transmit", "transmitted")):
    for _what, _help in (
        ("bytes", "Bytes"),
        ("packets", "Packets"),
        ("errs", "Errors"),
        ("drop", "Packets dropped"),
    ):
        _add(
            f"node_network_{_direction}_{_what}_total",
            "counter",
            f"{_help} {_verb} by the interface (/proc/net/dev).",
        )

# -- node: filesystems (statvfs of the mounted real filesystems) ------------------------------

_add("node_filesystem_size_bytes", "gauge", "Filesystem size in bytes.")
_add("node_filesystem_free_bytes", "gauge", "Filesystem free space in bytes (root's too).")
_add(
    "node_filesystem_avail_bytes",
    "gauge",
    "Filesystem space available to unprivileged users in bytes.",
)

# -- VMs: which VM a uuid is (the node that runs it gives it) --------------------------------

_add(
    "heron_vm_info",
    "gauge",
    "1 for each VM running on the node; name: what the VM is called now (its vm label, the "
    "uuid, is what its other series carry: join on vm to pick or label them by name).",
)

# -- VMs: CPU and memory of the QEMU process (/proc/PID), QMP ---------------------------------

_add(
    "libvirt_domain_info_cpu_time_seconds_total",
    "counter",
    "CPU seconds used by the VM's QEMU process, all its threads (user + system, /proc/PID/stat).",
)
_add(
    "libvirt_domain_info_cpu_ready_seconds_total",
    "counter",
    "Seconds the VM's vCPU threads were runnable but waited for a host CPU, summed over its "
    "vCPUs (run-queue delay from /proc/PID/task/TID/schedstat): what the guest sees as "
    "steal, vSphere's 'CPU ready'. Drops when a vCPU is unplugged.",
)
_add(
    "libvirt_domain_info_virtual_cpus",
    "gauge",
    "vCPUs the VM has (its QEMU's vCPU threads).",
)
_add(
    "libvirt_domain_info_memory_usage_bytes",
    "gauge",
    "Host RAM the VM's QEMU process holds (VmRSS, /proc/PID/status).",
)
_add(
    "libvirt_domain_info_maximum_memory_bytes",
    "gauge",
    "RAM the guest was given: boot memory plus plugged DIMMs (QMP query-memory-size-summary).",
)
_add(
    "libvirt_domain_memory_stats_actual_balloon_bytes",
    "gauge",
    "RAM the guest has after its balloon (QMP query-balloon); only for VMs with a balloon.",
)

# -- VMs: disks (QMP query-blockstats) ------------------------------------------------------

for _name, _help in (
    ("read_bytes_total", "Bytes read by the guest"),
    ("write_bytes_total", "Bytes written by the guest"),
    ("read_requests_total", "Read requests of the guest"),
    ("write_requests_total", "Write requests of the guest"),
    ("flush_requests_total", "Flush requests of the guest"),
    ("read_time_seconds_total", "Seconds spent by the guest's reads (their latency summed)"),
    ("write_time_seconds_total", "Seconds spent by the guest's writes (their latency summed)"),
    ("flush_time_seconds_total", "Seconds spent by the guest's flushes (their latency summed)"),
):
    _add(
        f"libvirt_domain_block_stats_{_name}",
        "counter",
        f"{_help}, per VM disk (QMP query-blockstats; target_device: the disk's name, disk0...).",
    )

# -- VMs: NICs (the taps' counters, from the guest's side as libvirt reports them) ------------

for _direction, _verb in (("receive", "received"), ("transmit", "transmitted")):
    for _what, _help in (
        ("bytes", "Bytes"),
        ("packets", "Packets"),
        ("errors", "Errors"),
        ("drops", "Packets dropped"),
    ):
        _add(
            f"libvirt_domain_interface_stats_{_direction}_{_what}_total",
            "counter",
            f"{_help} {_verb} by the guest's NIC (its tap's counters, swapped: the tap "
            "transmits what the guest receives; target_device: the tap).",
        )

# -- IPMI sensors (ipmitool sensor), as the IPMI exporter names them -------------------------

_STATE = (
    "as the BMC judges it: 0 nominal, 1 warning (non-critical), 2 critical (critical or "
    "non-recoverable)."
)
for _family, _what, _unit in (
    ("temperature", "Temperature", ("celsius", "degrees Celsius")),
    ("fan_speed", "Fan speed", ("rpm", "rotations per minute")),
    ("voltage", "Voltage", ("volts", "volts")),
    ("current", "Current", ("amperes", "amperes")),
    ("power", "Power", ("watts", "watts")),
):
    _add(f"ipmi_{_family}_{_unit[0]}", "gauge", f"{_what} sensor reading in {_unit[1]}.")
    _add(f"ipmi_{_family}_state", "gauge", f"State of a {_what.lower()} sensor {_STATE}")
_add(
    "ipmi_sensor_value",
    "gauge",
    "Reading of a threshold sensor in another unit (type: the unit, e.g. percent).",
)
_add("ipmi_sensor_state", "gauge", f"State of a threshold sensor in another unit {_STATE}")

# -- the node's services and storage (monitor.services, monitor.storage) ----------------------

for _metric in (*STORAGE_METRICS, *SERVICE_METRICS, *SWITCH_METRICS):
    assert _metric.name not in METRICS, _metric.name
    METRICS[_metric.name] = _metric
