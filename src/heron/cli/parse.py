"""Text given on the command line, turned into API values.

Each parser is given to an option as `typer.Option(parser=...)`; bad text raises
`typer.BadParameter`, which `heron` prints as one usage line naming the option (exit 2) before
any request is sent. The messages say what the option wants, with an example.
"""

import ipaddress
import math
import re
import ssl
from collections.abc import Iterable
from typing import Any

import typer

_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
# "10G", "10GiB", "10gb", "1.5T", "512" (bytes): the binary units users type for disks and RAM.
_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)
_SIZE_WANTED = "a size like 512M, 10G or 1.5T"


def size(text: str | int) -> int:
    """Bytes from '10G', '512M', '1T' or plain bytes (an int is a default, already parsed)."""
    if isinstance(text, int):
        return text
    found = _SIZE.fullmatch(text.strip())
    if found is None:
        raise typer.BadParameter(f"{text!r} is not {_SIZE_WANTED}")
    number, unit = found.groups()
    return int(float(number) * _UNITS[unit.lower()])


def mebibytes(text: str | int) -> int:
    """Memory in MiB, from a size; a non-zero size under 1 MiB is surely a missing unit.
    An int is a default, already in MiB."""
    if isinstance(text, int):
        return text
    value = size(text)
    if 0 < value < 2**20:
        raise typer.BadParameter(f"{text!r} is less than 1 MiB: give a unit, e.g. {text}M")
    return value >> 20


def seconds(text: str | float) -> float:
    """A duration in seconds: a finite number, not negative."""
    if isinstance(text, (int, float)):
        return float(text)
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise typer.BadParameter(f"{text!r} is not a number of seconds (e.g. 60 or 0.5)")
    return value


def _options(parts: Iterable[str], spec: str, wanted: str) -> dict[str, str]:
    """The ',key=value' items after a disk's or NIC's main part."""
    options = {}
    for part in parts:
        key, equals, value = part.partition("=")
        if not equals or not key or not value:
            raise typer.BadParameter(f"{part!r} in {spec!r} is not KEY=VALUE; {wanted}")
        options[key] = value
    return options


_DISK_WANTED = "give pool:SIZE, pool:from=POOL/IMAGE[:SIZE] or vol=POOL/NAME, then ,bus=... etc."


def disk(text: str) -> dict[str, Any]:
    """pool:SIZE, pool:from=POOL/IMAGE[:SIZE], or vol=POOL/NAME; ',bus=...' etc. may follow."""
    main, *rest = text.split(",")
    result: dict[str, Any] = {}
    if main.startswith("vol="):
        if not main[4:]:
            raise typer.BadParameter(f"{text!r} names no volume; {_DISK_WANTED}")
        result["volume"] = main[4:]
    else:
        pool, _, items = main.partition(":")
        if not pool or "=" in pool:
            raise typer.BadParameter(f"{text!r} names no pool; {_DISK_WANTED}")
        result["pool"] = pool
        for item in filter(None, items.split(":")):
            if item.startswith("from=") and item[5:] and "source" not in result:
                result["source"] = item[5:]
            elif _SIZE.fullmatch(item.strip()) and "size" not in result:
                result["size"] = size(item)
            else:
                raise typer.BadParameter(f"{item!r} in {text!r} is not understood; {_DISK_WANTED}")
    result.update(_options(rest, text, _DISK_WANTED))
    return result


_NIC_WANTED = "give a network (or user, none), then ,model=e1000,mac=..,address=.. etc."


def nic(text: str) -> dict[str, str]:
    """NETWORK[,key=value...]: e.g. 'user', 'lan,address=10.1.0.9' or 'user,model=e1000'."""
    network, *rest = text.split(",")
    if not network or "=" in network:
        raise typer.BadParameter(f"{text!r} names no network; {_NIC_WANTED}")
    return {"network": network, **_options(rest, text, _NIC_WANTED)}


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


def duration(text: str | float) -> float:
    """A length of time: `90s`, `15m`, `6h`, `7d`, `1y`, or plain seconds; more than 0. A
    number is a default, already in seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    number, unit = (text[:-1], text[-1]) if text and text[-1] in DURATION_UNITS else (text, "s")
    try:
        value = float(number) * DURATION_UNITS[unit]
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise typer.BadParameter(f"{text!r} is not a length of time (e.g. 15m, 6h, 7d, 1y)")
    return value


def label(text: str) -> str:
    """NAME=VALUE, as a series' or an alert's label (the value may be empty)."""
    name, sep, _ = text.partition("=")
    if not sep or not name.isidentifier():
        raise typer.BadParameter(f"{text!r} is not NAME=VALUE (e.g. node=node1)")
    return text


def watched(text: str) -> str:
    """What the live view watches: node:NAME or vm:ID (or vm:NAME)."""
    kind, sep, name = text.partition(":")
    if not sep or kind not in ("node", "vm") or not name or "/" in name:
        raise typer.BadParameter(f"{text!r} is not node:NAME or vm:ID (e.g. node:node1)")
    return text


class Choice:
    """One of a fixed set of words (the vocabulary comes from the models)."""

    def __init__(self, choices: Iterable[str]):
        self.choices = tuple(choices)
        self.__name__ = "choice"  # typer names the parser in its help

    def __call__(self, text: str) -> str:
        if text not in self.choices:
            wanted = ", ".join(self.choices[:-1]) + f" or {self.choices[-1]}"
            raise typer.BadParameter(f"{text!r} is not {wanted}")
        return text


def ipv4(text: str) -> str:
    """An IPv4 address, as 10.1.0.1."""
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not an IPv4 address like 10.1.0.1") from None


def cidr(text: str) -> str:
    """An IPv4 network, as 10.1.0.0/24."""
    try:
        return str(ipaddress.IPv4Network(text, strict=True))
    except ValueError as exc:
        raise typer.BadParameter(f"{text!r} is not a network like 10.1.0.0/24 ({exc})") from None


def address_range(text: str) -> dict[str, str]:
    """FIRST-LAST, as 10.1.0.100-10.1.0.199."""
    first, dash, last = text.partition("-")
    if not dash:
        raise typer.BadParameter(f"{text!r} is not a range like 10.1.0.100-10.1.0.199")
    return {"first": ipv4(first), "last": ipv4(last)}


def uplink(text: str) -> dict[str, str]:
    """NODE=INTERFACE, as node1=eth1 (NODE= alone: the node has none)."""
    node, equals, interface = text.partition("=")
    if not equals or not node or "=" in interface:
        raise typer.BadParameter(f"{text!r} is not NODE=INTERFACE, e.g. node1=eth1")
    return {node: interface}


_VLANS = re.compile(r"[0-9]{1,4}(-[0-9]{1,4})?")


def vlans(text: str) -> list[str]:
    """VLANs and ranges, as 100,200-299."""
    items = text.split(",")
    for item in items:
        low, _, high = item.partition("-")
        if not _VLANS.fullmatch(item) or not 1 <= int(low) <= int(high or low) <= 4094:
            raise typer.BadParameter(f"{text!r} is not VLANs (1-4094) and ranges like 100,200-299")
    return items


def ports(text: str) -> str:
    """A port or a range of ports, as 22 or 1000-2000."""
    low, _, high = text.partition("-")
    if not re.fullmatch(r"[0-9]{1,5}(-[0-9]{1,5})?", text) or not (
        1 <= int(low) <= int(high or low) <= 65535
    ):
        raise typer.BadParameter(f"{text!r} is not a port (1-65535) or a range like 1000-2000")
    return text


def remote(text: str) -> str:
    """An IPv4 network or one address, as 10.1.0.0/24, 0.0.0.0/0 or 10.1.0.9."""
    try:
        return str(ipaddress.IPv4Network(text, strict=True))
    except ValueError as exc:
        raise typer.BadParameter(
            f"{text!r} is not a network like 10.1.0.0/24 or an address ({exc})"
        ) from None


_FINGERPRINT_WANTED = (
    "a SHA-256 fingerprint: 64 hex digits, in pairs with colons or not "
    "(as `openssl x509 -noout -fingerprint -sha256` prints it)"
)


def fingerprint(text: str) -> str:
    """A SHA-256 certificate fingerprint, written as OpenSSL prints it (AB:CD:...); given
    with or without colons, a 'SHA256:'/'sha256 Fingerprint=' prefix, in either case."""
    value = text.strip()
    for prefix in ("sha256 fingerprint=", "sha256:"):
        if value.lower().startswith(prefix):
            value = value[len(prefix) :]
    digits = value.replace(":", "").upper()
    if len(digits) != 64 or not re.fullmatch(r"[0-9A-F]{64}", digits):
        raise typer.BadParameter(f"{text!r} is not {_FINGERPRINT_WANTED}")
    return ":".join(digits[i : i + 2] for i in range(0, 64, 2))


def certificate_file(text: str) -> str:
    """The PEM certificate in the file named (its text)."""
    try:
        with open(text) as file:
            pem = file.read(1 << 20)
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {text!r}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise typer.BadParameter(f"{text!r} is not a PEM certificate (binary data)") from exc
    if "-----BEGIN CERTIFICATE-----" not in pem or "-----END CERTIFICATE-----" not in pem:
        raise typer.BadParameter(f"{text!r} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    try:
        ssl.create_default_context(cadata=pem)
    except (ssl.SSLError, ValueError) as exc:
        raise typer.BadParameter(f"{text!r} holds no readable certificate: {exc}") from exc
    return pem
