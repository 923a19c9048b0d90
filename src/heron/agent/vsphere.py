"""The vsphere import source on a node: a session with an ESXi host or vCenter over its SOAP
API (pyVmomi), the inventory it lists, a VM powered off, and a disk's files downloaded over
the datastore's HTTPS file access (`/folder/<path>?dcPath=&dsName=`) into the node's staging
folder, where the import converts them as it does a directory source's.

Every connection, SOAP or download, is a `PinnedHTTPSConnection`: the server's certificate
must be the one pinned when the source was added. The calls block; the agent runs them in a
thread (`asyncio.to_thread`). What a VM's description means for its import is decided in
heron.v2v.vsphere, on the plain data `vm_facts` reduces it to.
"""

import contextlib
import http.client
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pyVmomi import VmomiSupport, vim, vmodl
from pyVmomi.SoapAdapter import SoapStubAdapter

from heron.models.imports import ImportSource
from heron.tls.pinned import PinMismatch, pinned_connection
from heron.v2v import vmdk
from heron.v2v.common import ParseError
from heron.v2v.vsphere import DeviceFacts, VmFacts, folder_url, parse_datastore_path, sibling

CHUNK = 1 << 20
# The staging folder's filesystem keeps this much free; checked every SPACE_CHECK bytes.
SPACE_RESERVE = 2 << 30
SPACE_CHECK = 64 << 20
TIMEOUT = 60.0
# A VMDK descriptor is a few hundred bytes; more is the data of a sparse file.
MAX_DESCRIPTOR = 64 << 10
# Images down a snapshot chain followed at most (a loop is refused before).
MAX_CHAIN = 255


# The snapshot warm migration takes each round (one at a time: see WarmSession).
WARM_SNAPSHOT = "heron-warm"

# What a call to the server can raise besides VsphereError.
FAULTS = (OSError, http.client.HTTPException, vmodl.MethodFault)


class VsphereError(Exception):
    """What the server said or did, in a sentence for the task's error."""


def _name(obj: Any) -> str:
    """'vim.vm.device.VirtualDisk' (pyVmomi's type name) → 'VirtualDisk'."""
    return type(obj).__name__.rsplit(".", 1)[-1]


class Session:
    """A logged-in session with the source's server; `with Session(source) as s:`."""

    def __init__(self, source: ImportSource) -> None:
        if source.host is None or source.fingerprint is None:
            raise VsphereError(f"source {source.name} is not a vsphere source")
        self.source = source
        self.base = f"https://{_netloc(source.host, source.port)}"
        self.stub: Any = None
        self.content: Any = None

    def __enter__(self) -> "Session":
        source = self.source
        version = VmomiSupport.newestVersions.GetName("vim")  # type: ignore[no-untyped-call]
        stub: Any = SoapStubAdapter(  # type: ignore[no-untyped-call]
            host=source.host, port=source.port, version=version, httpConnectionTimeout=TIMEOUT
        )
        stub.scheme = pinned_connection(source.fingerprint or "")
        stub.schemeArgs.pop("context", None)
        self.stub = stub
        try:
            instance = vim.ServiceInstance("ServiceInstance", stub)  # type: ignore[no-untyped-call]
            self.content = instance.RetrieveContent()
            self.content.sessionManager.Login(source.user, source.password)
        except PinMismatch:
            raise
        except vim.fault.InvalidLogin as exc:
            raise VsphereError(f"{source.host}: the user name or password is refused") from exc
        except (OSError, http.client.HTTPException, vmodl.MethodFault) as exc:
            raise VsphereError(f"{source.host}:{source.port}: {said(exc)}") from exc
        return self

    def __exit__(self, *_: object) -> None:
        if self.content is not None:
            # the session times out on the server otherwise
            with contextlib.suppress(OSError, http.client.HTTPException, vmodl.MethodFault):
                self.content.sessionManager.Logout()
        if self.stub is not None:
            self.stub.DropConnections()

    # -- inventory ---------------------------------------------------------------------

    def datacenters(self) -> list[Any]:
        found: list[Any] = []

        def visit(folder: Any) -> None:
            for child in folder.childEntity:
                if isinstance(child, vim.Datacenter):
                    found.append(child)
                elif isinstance(child, vim.Folder):
                    visit(child)

        visit(self.content.rootFolder)
        return found

    def vms(self) -> Iterator[tuple[Any, Any, str]]:
        """Each VM with its datacenter and inventory path (/<datacenter>/vm/<folders>/<name>)."""
        for dc in self.datacenters():
            view = self.content.viewManager.CreateContainerView(
                dc.vmFolder, [vim.VirtualMachine], True
            )
            try:
                for vm in view.view:
                    yield vm, dc, _inventory_path(vm, dc)
            finally:
                view.DestroyView()

    def find(self, path: str) -> tuple[Any, str]:
        """The VM at an inventory path, and its datacenter's name."""
        vm = self.content.searchIndex.FindByInventoryPath(path.lstrip("/"))
        if vm is None or not isinstance(vm, vim.VirtualMachine):
            raise VsphereError(f"no VM at {path} on {self.source.host} (moved or removed?)")
        return vm, path.lstrip("/").split("/", 1)[0]

    def power_off(self, vm: Any, allowed: bool) -> bool:
        """Refuse a running VM unless `allowed`, then power it off. True when it was on."""
        state = str(vm.runtime.powerState)
        if state == "poweredOff":
            return False
        if state != "poweredOn":
            raise VsphereError(f"{vm.name} is {state}: power it off in vSphere first")
        if not allowed:
            raise VsphereError(
                f"{vm.name} runs: its disks change under the copy. Power it off in vSphere, "
                "or import it with power_off to have Heron power it off"
            )
        self.wait(vm.PowerOffVM_Task(), f"powering {vm.name} off")
        return True

    def properties(self, obj: Any, *paths: str) -> dict[str, Any]:
        """Properties of an object read alone, an unset one absent: the whole object can
        hold what pyVmomi refuses (the stand-in names a snapshot as a task's entity, where
        vSphere has a ManagedEntity), and the stand-in fails reading an unset one directly."""
        collector: Any = vmodl.query.PropertyCollector
        spec = collector.FilterSpec(
            objectSet=[collector.ObjectSpec(obj=obj)],
            propSet=[collector.PropertySpec(type=type(obj), pathSet=list(paths))],
        )
        found = self.content.propertyCollector.RetrieveContents([spec])
        return {p.name: p.val for p in found[0].propSet} if found else {}

    def wait(self, task: Any, what: str, timeout: float = 300.0) -> Any:
        """A server task's result."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.properties(task, "info.state", "info.error", "info.result")
            if info.get("info.state") == "success":
                return info.get("info.result")
            if info.get("info.state") == "error":
                raise VsphereError(f"{what}: {said(info.get('info.error'))}")
            if time.monotonic() > deadline:
                raise VsphereError(f"{what}: no answer in {timeout:.0f} s")
            time.sleep(0.2)  # the server's task: polled, as the API has it

    def shut_down(self, vm: Any, timeout: float = 300.0) -> str:
        """Stop a running VM for good: its guest shuts down when VMware Tools run in it,
        otherwise (or when it has not stopped after `timeout`) it is powered off. How."""
        if str(vm.runtime.powerState) == "poweredOff":
            return "was off"
        if str(getattr(vm.guest, "toolsRunningStatus", "")) == "guestToolsRunning":
            with contextlib.suppress(*FAULTS):
                vm.ShutdownGuest()
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    if str(vm.runtime.powerState) == "poweredOff":
                        return "shut down by its guest"
                    time.sleep(1.0)
        self.wait(vm.PowerOffVM_Task(), f"powering {vm.name} off")
        return "powered off"

    # -- datastore files ---------------------------------------------------------------

    def download(
        self,
        datastore_path: str,
        datacenter: str,
        into: Path,
        progress: Callable[[int], None] | None = None,
        limit: int | None = None,
    ) -> Path:
        """A datastore file into folder `into` (same base name); `limit`: refuse a larger one."""
        url = urlsplit(folder_url(self.base, datastore_path, datacenter))
        target = into / parse_datastore_path(datastore_path)[1].rsplit("/", 1)[-1]
        connection = pinned_connection(self.source.fingerprint or "")(
            url.hostname or "", url.port, timeout=TIMEOUT
        )
        try:
            connection.request(
                "GET", f"{url.path}?{url.query}", headers={"Cookie": self.stub.cookie}
            )
            response = connection.getresponse()
            if response.status != 200:
                raise VsphereError(
                    f"{datastore_path}: the datastore answers {response.status} {response.reason}"
                )
            length = int(response.getheader("Content-Length") or -1)
            if limit is not None and length > limit:
                raise VsphereError(f"{datastore_path}: {length} bytes, more than a descriptor")
            done = 0
            with target.open("wb") as out:
                while chunk := response.read(CHUNK):
                    if chunk.count(0) == len(chunk):
                        out.seek(len(chunk), 1)  # a hole: a thin disk's flat file is mostly
                    else:
                        out.write(chunk)
                    done += len(chunk)
                    if limit is not None and done > limit:
                        raise VsphereError(f"{datastore_path}: more than a descriptor")
                    if done % SPACE_CHECK < CHUNK:
                        check_space(into)
                    if progress is not None:
                        progress(len(chunk))
                out.truncate(done)
            if length >= 0 and done != length:
                raise VsphereError(f"{datastore_path}: cut short at {done} of {length} bytes")
        except (OSError, http.client.HTTPException) as exc:
            raise VsphereError(f"{datastore_path}: {exc}") from exc
        finally:
            connection.close()
        return target

    def fetch_disk(
        self,
        datastore_path: str,
        datacenter: str,
        into: Path,
        progress: Callable[[int], None] | None = None,
    ) -> Path:
        """A VMDK with everything it reads: its descriptor, its extents, the images below it
        (snapshot deltas), all named relative to the descriptor's folder. Returns the local
        descriptor (or the one file of a sparse disk)."""
        top: Path | None = None
        seen: set[str] = set()
        current: str | None = datastore_path
        while current is not None:
            if current in seen or len(seen) >= MAX_CHAIN:
                raise VsphereError(f"the chain of {datastore_path} loops at {current}")
            seen.add(current)
            local = self.download(current, datacenter, into, progress)
            top = top or local
            current = self._below(local, current, datacenter, into, progress)
        assert top is not None
        return top

    def _below(
        self,
        local: Path,
        datastore_path: str,
        datacenter: str,
        into: Path,
        progress: Callable[[int], None] | None,
    ) -> str | None:
        """Fetch a text descriptor's extents; the datastore path of its parent, if any."""
        with local.open("rb") as f:
            head = f.read(MAX_DESCRIPTOR + 1)
        if not vmdk.looks_like_text_descriptor(head[:512]):
            return None  # a sparse file holds its own descriptor and its data
        if len(head) > MAX_DESCRIPTOR:
            raise VsphereError(f"{datastore_path}: a descriptor larger than {MAX_DESCRIPTOR}")
        try:
            descriptor = vmdk.parse_descriptor(head.decode("utf-8", "replace"), datastore_path)
            if descriptor.raw_device:
                raise VsphereError(f"{datastore_path}: a raw device mapping is not a file")
            for name in descriptor.data_files:
                self.download(sibling(datastore_path, name), datacenter, into, progress)
            if descriptor.parent_hint:
                return sibling(datastore_path, descriptor.parent_hint)
        except ParseError as exc:
            raise VsphereError(f"{datastore_path}: {exc}") from exc
        return None


def vm_facts(vm: Any, datacenter: Any, path: str) -> VmFacts:
    """The plain data heron.v2v.vsphere maps (one property read per field, as pyVmomi does)."""
    config = vm.config
    hardware = config.hardware
    networks = {getattr(n, "key", None): n.name for n in vm.network if hasattr(n, "key")}
    devices = [_device(d, networks) for d in hardware.device]
    boot = getattr(config, "bootOptions", None)
    return VmFacts(
        name=vm.name,
        path=path,
        datacenter=datacenter.name,
        vmx=config.files.vmPathName or "",
        template=bool(config.template),
        power=str(vm.runtime.powerState),
        vcpus=hardware.numCPU,
        cores_per_socket=getattr(hardware, "numCoresPerSocket", None),
        memory_mib=hardware.memoryMB,
        firmware=str(config.firmware or "bios"),
        secure_boot=getattr(boot, "efiSecureBootEnabled", None) if boot else None,
        guest_id=config.guestId,
        encrypted=getattr(config, "keyId", None) is not None,
        cbt=bool(getattr(config, "changeTrackingEnabled", False)),
        devices=devices,
    )


def _device(device: Any, networks: dict[Any, str]) -> DeviceFacts:
    facts = DeviceFacts(
        type=_name(device),
        key=device.key,
        label=getattr(getattr(device, "deviceInfo", None), "label", "") or "",
        controller_key=getattr(device, "controllerKey", None),
        unit=getattr(device, "unitNumber", None),
    )
    if isinstance(device, vim.vm.device.VirtualController):
        facts["bus_number"] = device.busNumber
        facts["shared_bus"] = str(getattr(device, "sharedBus", None) or "noSharing")
    backing = getattr(device, "backing", None)
    if isinstance(device, vim.vm.device.VirtualDisk):
        capacity = getattr(device, "capacityInBytes", None) or (
            device.capacityInKB * 1024 if device.capacityInKB else None
        )
        parents: list[str] = []
        parent = getattr(backing, "parent", None)
        while parent is not None and len(parents) < MAX_CHAIN:
            parents.append(parent.fileName)
            parent = getattr(parent, "parent", None)
        facts["capacity"] = capacity
        facts["backing"] = _name(backing)
        facts["file"] = getattr(backing, "fileName", None)
        facts["parents"] = parents
        facts["disk_mode"] = str(getattr(backing, "diskMode", None) or "persistent")
        facts["sharing"] = str(getattr(backing, "sharing", None) or "sharingNone")
        facts["encrypted"] = getattr(backing, "keyId", None) is not None
    elif isinstance(device, vim.vm.device.VirtualEthernetCard):
        network = getattr(backing, "deviceName", None)
        port = getattr(backing, "port", None)
        if port is not None:  # a distributed port group: named by its key
            network = networks.get(port.portgroupKey, port.portgroupKey)
        connectable = getattr(device, "connectable", None)
        facts["mac"] = device.macAddress
        facts["address_type"] = str(device.addressType or "generated")
        facts["network"] = network
        facts["connected"] = bool(connectable.startConnected) if connectable else True
    elif isinstance(device, vim.vm.device.VirtualPCIPassthrough):
        facts["vgpu"] = getattr(backing, "vgpu", None)
    return facts


def _inventory_path(vm: Any, dc: Any) -> str:
    names = [vm.name]
    parent = vm.parent
    while parent is not None and parent != dc.vmFolder:
        names.append(parent.name)
        parent = parent.parent
    return "/" + "/".join([dc.name, "vm", *reversed(names)])


def check_space(folder: Path) -> None:
    """Stop filling the node's disk: the staging folder's filesystem keeps SPACE_RESERVE
    bytes free (the node's VMs, logs and ConfigDB live there too)."""
    free = shutil.disk_usage(folder).free
    if free < SPACE_RESERVE:
        raise VsphereError(
            f"the staging folder {folder} has {free >> 20} MiB free, under the "
            f"{SPACE_RESERVE >> 20} MiB kept free: free space on the node, or import the VM "
            "from a datastore mounted over NFS (read in place)"
        )


def _netloc(host: str, port: int) -> str:
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return host if port == 443 else f"{host}:{port}"


def said(error: Any) -> str:
    message = getattr(error, "msg", None) or getattr(error, "localizedMessage", None)
    return str(message or error or "failed")
