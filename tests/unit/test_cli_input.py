"""Bad text on the command line: one usage line naming the option, exit 2, never a traceback.

The options are found in the typer app itself, so a new option is covered as soon as it
exists: one that parses text is fed malformed values of its kind, and one that takes free text
must be listed below as such, or the test fails until someone decides which it is.
"""

import inspect
import json
import sys
import tempfile
import threading
import time
import types
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin, get_type_hints

import pytest
import typer
import typer.main
from typer.models import ParameterInfo
from typer.testing import CliRunner

from heron.cli import main, parse
from heron.tls.certs import make_authority

# Nothing listens there: a command that wrongly got past parsing fails fast, not by hanging.
NOWHERE = {"HERON_URL": "http://127.0.0.1:9", "HERON_CONFIG": "/nonexistent/heron-cli.json"}

# Files for --ca-file: a real CA certificate, one that only looks like one, and no PEM at all.
_FILES = Path(tempfile.mkdtemp(prefix="heron-cli-input-"))
(_FILES / "ca.pem").write_text(make_authority("test", time.time()).certificate)
(_FILES / "mangled.pem").write_text(
    "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"
)
(_FILES / "empty.pem").write_text("")

# Malformed and well-formed text for each parser of heron.cli.parse.
BAD: dict[Callable[..., Any], list[str]] = {
    parse.size: ["abc", "", "10Q", "1.2.3G", "-1G", "G", "infG", "nan"],
    parse.mebibytes: ["abc", "512", "2X", "-512M"],
    parse.seconds: ["abc", "-1", "nan", "inf", "10m"],
    parse.disk: [
        "local:size=1G",
        "local:abc",
        ":10G",
        "vol=",
        "local:10G,bus",
        "local:10G,=scsi",
        "local:10G:20G",
        "local:from=",
    ],
    parse.nic: ["", "model=e1000", "user,e1000", "user,model="],
    parse.ipv4: ["10.1.0", "10.1.0.256", "abc", ""],
    parse.cidr: ["10.1.0.1/24", "10.1.0.0/33", "10.1.0.0/x", "abc"],
    parse.address_range: ["10.1.0.1", "10.1.0.1-", "-10.1.0.9", "a-b"],
    parse.uplink: ["node1", "=eth1", "node1=eth1=x", ""],
    parse.vlans: ["0", "4095", "100-", "200-100", "a", "100,,200"],
    parse.ports: ["0", "65536", "22-", "2000-1000", "a", "22,80"],
    parse.remote: ["10.1.0.1/24", "10.1.0.0/33", "abc", ""],
    parse.fingerprint: ["abc", "AB:CD", "SHA256:" + "G" * 64, "A" * 63, "A" * 66],
    parse.duration: ["abc", "", "0", "-5m", "5x", "m", "nanh"],
    parse.label: ["node", "=x", "no de=x", ""],
    parse.watched: ["node1", "pool:shared", "vm:", ":x", "node:a/b"],
    parse.certificate_file: [
        str(_FILES / "missing.pem"),
        str(_FILES / "empty.pem"),
        str(_FILES / "mangled.pem"),
        str(_FILES),
    ],
}
GOOD: dict[Callable[..., Any], str] = {
    parse.size: "10G",
    parse.mebibytes: "512M",
    parse.seconds: "30",
    parse.disk: "local:10G",
    parse.nic: "user",
    parse.ipv4: "10.1.0.1",
    parse.cidr: "10.1.0.0/24",
    parse.address_range: "10.1.0.10-10.1.0.20",
    parse.uplink: "node1=eth1",
    parse.vlans: "100,200-299",
    parse.ports: "22",
    parse.remote: "10.1.0.0/24",
    parse.fingerprint: "AB" * 32,
    parse.duration: "15m",
    parse.label: "node=node1",
    parse.watched: "node:node1",
    parse.certificate_file: str(_FILES / "ca.pem"),
}
BAD_NUMBERS = {int: ["abc", "1.5", "1e3x"], float: ["abc", "1,5"]}
# What a command needs beyond its required parameters to get past its own checks.
EXTRA = {
    "volume import": ["--path", "/image.qcow2"],
    "network create": ["--subnet", "10.1.0.0/24"],
    "vm nic set": ["--link", "up"],
}

# Options and arguments whose text goes to the API as it is: names and references the API
# resolves, paths on a node, free text, and values the API validates against live state
# (a QEMU machine type, an ardfs protection scheme: the API answers 422 with the field).
FREE_TEXT = {
    "name",
    "vm",
    "node",
    "pool",
    "volume",
    "disk",  # pool remove-disk: a disk id
    "point",  # dr restore: a point id, found in the VM's list or 404
    "task_id",
    "token_id",
    "target",
    "group",
    "site",
    "description",
    "username",
    "password",
    "current_password",
    "grant_id",
    "subject",  # heron user unlock: a user name or a client address, as recorded
    "url",
    "path",
    "upload",
    "directory",
    "server",
    "export",
    "options",
    "portal",
    "initiator",  # heron volume export: an IQN, checked by the API
    "chap_user",
    "chap_secret",
    "pattern",
    "rbd_pool",
    "monitor",
    "user",
    "conf",
    "machine",
    "protection",
    "switch",
    "network",  # a network's name, or user
    "mac",  # checked by the API (the same pattern as the models)
    "security_group",  # names of security groups, checked by the API
    "remote_group",
    "snapshot",  # a VM's snapshot, by name or id
    "template",  # a template VM's name
    "hostname",  # cloud-init: checked by the API (the model's pattern)
    "ssh_key",  # cloud-init: an OpenSSH key line (checked by the API), or @FILE
    "password_hash",  # cloud-init: a crypt(3) hash, checked by the API
    "user_data",  # cloud-init: a file of user-data
    # Monica: a metric, rule, alert or silence the API looks up; what the alerts say; where
    # notices go and the secrets to send them with (the API checks what it can)
    "metric",
    "rule",
    "alert_id",
    "silence_id",
    "summary",
    "comment",
    "host",
    "sender",
    "to",
    "community",
    "auth_key",
    "priv_key",
    "secret",
    # Auto-support: the file a bundle is written to; the support address and the channel
    # it goes through (the API checks the address's form and that the channel exists)
    "output",
    "address",
    "channel",
    # V2V: an import source's name; VMs by their name or path in its scan; an NFS export
    # as SERVER:/PATH (the API checks the server's and the path's form)
    "source",
    "vms",
    "nfs",
}


def leaf_commands(command: Any, path: list[str]) -> Iterator[tuple[list[str], Any]]:
    subcommands = getattr(command, "commands", None)
    if subcommands is None:
        yield path, command
        return
    for name, sub in sorted(subcommands.items()):
        yield from leaf_commands(sub, [*path, name])


def base_type(annotation: Any) -> tuple[Any, ParameterInfo | None]:
    """The annotation's item type without Optional/list, and typer's parameter info."""
    info = None
    if get_origin(annotation) is Annotated:
        annotation, *extras = get_args(annotation)
        info = next((e for e in extras if isinstance(e, ParameterInfo)), None)
    while get_origin(annotation) in (Union, types.UnionType, list):
        annotation = next(a for a in get_args(annotation) if a is not type(None))
    return annotation, info


class Param:
    """One option or argument of one command, with what it parses."""

    def __init__(self, command: list[str], param: Any, annotation: Any):
        self.command = command
        self.name: str = param.name
        self.opts: list[str] = list(param.opts)
        self.is_option = type(param).__name__ == "TyperOption"
        self.is_flag = bool(getattr(param, "is_flag", False))
        self.required = bool(param.required)
        self.type, info = base_type(annotation)
        self.parser = info.parser if info is not None else None
        self.hint = self.opts[0] if self.is_option else (param.metavar or param.name.upper())
        # A number option's least allowed value (typer's min=) is surely well-formed.
        self.least = info.min if info is not None else None

    def __repr__(self) -> str:
        return f"heron {' '.join(self.command)} {self.hint}"

    def bad(self) -> list[str] | None:
        """Malformed values for it; None for free text and flags."""
        if isinstance(self.parser, parse.Choice):
            shouted = self.parser.choices[0].upper()  # unless the words are upper case already
            return ["bogus", *([shouted] if shouted not in self.parser.choices else [])]
        if self.parser is not None:
            assert self.parser in BAD, f"{self}: add malformed examples for {self.parser}"
            return BAD[self.parser]
        if self.type is bool or self.is_flag:
            return None
        if self.type in BAD_NUMBERS:
            return BAD_NUMBERS[self.type]
        assert self.type in (str, Path), f"{self}: a {self.type} option needs a parser"
        assert self.name in FREE_TEXT, (
            f"{self} takes text but has no parser: give it one in heron.cli.parse, "
            "or list it in FREE_TEXT if the API takes the text as it is"
        )
        return None

    def good(self) -> list[str]:
        if isinstance(self.parser, parse.Choice):
            value = self.parser.choices[0]
        elif self.parser is not None:
            value = GOOD[self.parser]
        elif self.type is bool or self.is_flag:
            return [self.opts[0]]
        else:
            value = str(self.least or 1) if self.type in BAD_NUMBERS else "x"
        return [self.opts[0], value] if self.is_option else [value]


def every_param() -> list[Param]:
    found = []
    for path, command in leaf_commands(typer.main.get_command(main.app), []):
        hints = get_type_hints(inspect.unwrap(command.callback), include_extras=True)
        found += [Param(path, p, hints[p.name]) for p in command.params]
    return found


def parses_text(param: Param) -> bool:
    try:
        return bool(param.bad())
    except AssertionError:
        return False  # test_every_option_is_classified names it


PARAMS = every_param()
PARSING = [p for p in PARAMS if parses_text(p)]


def invocation(target: Param, value: str) -> list[str]:
    """The command with `value` for `target` and good values for whatever else it requires.
    Arguments come after `--`, so that a malformed '-1G' is still taken as the value."""
    options, arguments = [], []
    for param in PARAMS:
        if param.command != target.command:
            continue
        if param is target:
            given = [target.opts[0], value] if target.is_option else [value]
        elif param.required:
            given = param.good()
        else:
            continue
        (options if param.is_option else arguments).extend(given)
    # The extra options come first, so the option under test wins where they overlap.
    return [*target.command, *EXTRA.get(" ".join(target.command), []), *options, "--", *arguments]


def heron(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run `heron` the way its entry point does (main.main) inside typer's CliRunner."""
    runner = CliRunner()
    code: Any = 0
    with runner.isolation(env={**NOWHERE, **(env or {})}) as (out, err, _):
        try:
            main.main(args)
        except SystemExit as exc:
            code = exc.code
        sys.stdout.flush()
        sys.stderr.flush()
        return code, out.getvalue().decode(), err.getvalue().decode()


def test_the_options_were_found() -> None:
    hints = {repr(p) for p in PARSING}
    # A few that must be among them, so a broken discovery cannot pass by finding nothing.
    for expected in (
        "heron vm create --memory",
        "heron vm create --disk",
        "heron vm create --nic",
        "heron vm create --vcpus",
        "heron vm create --firmware",
        "heron vm shutdown --timeout",
        "heron volume create SIZE",
        "heron node io --memory",
        "heron pool create --type",
    ):
        assert expected in hints
    assert len(PARSING) >= 30


def test_every_option_is_classified() -> None:
    for param in PARAMS:
        param.bad()  # fails for an option that parses nothing and is not known as free text


@pytest.mark.parametrize("param", PARSING, ids=repr)
def test_malformed_values_get_one_usage_line(param: Param) -> None:
    for value in param.bad() or []:
        args = invocation(param, value)
        code, out, err = heron(args)
        shown = f"heron {' '.join(args)}: exit {code}\nstdout: {out}\nstderr: {err}"
        assert "Traceback" not in out + err, shown
        assert code == 2, shown
        assert out == "", shown
        lines = err.splitlines()
        assert len(lines) == 1, shown
        assert f"'{param.hint}'" in lines[0], shown
        assert lines[0].startswith(f"heron {' '.join(param.command)}: Invalid value"), shown


def test_good_values_pass_parsing() -> None:
    # The same invocations with good values get past parsing, to the (absent) API.
    for param in PARSING:
        if param.command[0] == "devcluster":
            continue  # would start a cluster: its parsing is covered by the bad values
        args = invocation(param, param.good()[-1])
        code, _, err = heron(args, {"HERON_NEW_PASSWORD": "x", "HERON_PASSWORD": "x"})
        assert code == 1 and err.startswith("heron: cannot reach"), (args, code, err)


@pytest.mark.parametrize(
    "args",
    [
        ["vm", "create"],
        ["vm", "frobnicate"],
        ["vm", "create", "x", "--memory"],
        ["vm", "create", "x", "--no-such-option"],
        ["volume", "import", "local", "x"],
    ],
)
def test_usage_errors_are_one_line(args: list[str]) -> None:
    code, out, err = heron(args)
    assert code == 2 and out == "" and len(err.splitlines()) == 1, (code, out, err)
    assert "Traceback" not in err


def test_no_arguments_show_the_help() -> None:
    code, out, err = heron(["vm"])
    assert code == 2 and "create" in out and "Traceback" not in out + err


def test_sizes_and_specs_mean_what_they_meant() -> None:
    assert parse.size("10G") == 10 * 2**30
    assert parse.size("10GiB") == parse.size("10gb") == parse.size(" 10 G ") == 10 * 2**30
    assert parse.size("1.5T") == 3 * 2**39
    assert parse.size("512") == 512
    assert parse.mebibytes("2G") == 2048 and parse.mebibytes("0") == 0
    assert parse.seconds("0.5") == 0.5
    assert parse.disk("local:10G,bus=scsi") == {"pool": "local", "size": 10 * 2**30, "bus": "scsi"}
    assert parse.disk("shared:from=shared/img:20G") == {
        "pool": "shared",
        "source": "shared/img",
        "size": 20 * 2**30,
    }
    assert parse.disk("shared:from=shared/img") == {"pool": "shared", "source": "shared/img"}
    assert parse.disk("vol=local/data,bus=sata") == {"volume": "local/data", "bus": "sata"}
    assert parse.nic("user,model=e1000") == {"network": "user", "model": "e1000"}
    assert parse.nic("none") == {"network": "none"}
    colons = ":".join(["AB"] * 32)
    for given in ("ab" * 32, colons.lower(), f"SHA256:{colons}", f"sha256 Fingerprint={colons}"):
        assert parse.fingerprint(given) == colons


class _Refusing(BaseHTTPRequestHandler):
    """An API that refuses everything with a 422 whose message spans lines."""

    def do_GET(self) -> None:
        body = json.dumps(
            {"error": "invalid", "message": "body.name: bad\nsecond line", "fields": []}
        ).encode()
        self.send_response(422)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


def test_api_errors_are_one_line_and_nonzero() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        code, out, err = heron(["vm", "list"], {"HERON_URL": url})
    finally:
        server.shutdown()
        server.server_close()
    assert code == 1 and out == ""
    assert err.splitlines() == ["heron: 422: body.name: bad second line"]
