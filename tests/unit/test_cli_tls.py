"""heron login pins the cluster CA as SSH pins a host key, and every later call checks it.

The API here is a stand-in (a few routes of it over real TLS on loopback, with certificates
from heron.tls): what is tested is the CLI's side of the handshake and of the pin.
"""

import json
import ssl
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from heron.cli import client, main
from heron.tls import Authority, NodeCredentials, fingerprint, issue
from heron.tls.certs import make_authority


class _StandInApi(BaseHTTPRequestHandler):
    """GET /auth/ca, POST /auth/login and GET /nodes, as a Heron node answers them."""

    authority: Authority
    logins: list[str]

    def _send(self, body: Any, status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/api/v1/auth/ca":
            pem = self.authority.certificate
            self._send({"certificate": pem, "fingerprint": fingerprint(pem)})
        else:
            self._send([])

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.logins.append(body["password"])
        self._send({"token": "hrn_t", "user": body["username"], "role": "admin"})

    def log_message(self, *args: Any) -> None:
        pass


class Node:
    """A stand-in node serving HTTPS with a certificate from `authority` (changeable)."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.logins: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _StandInApi)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        self.context: ssl.SSLContext | None = None
        self.use(make_authority("first", time.time()))
        self.server.socket = self.context.wrap_socket(self.server.socket, server_side=True)  # type: ignore[union-attr]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def use(self, authority: Authority) -> None:
        """Serve a certificate of `authority` from now on (as a reinstalled cluster would)."""
        credentials = NodeCredentials(self.tmp / "tls")
        credentials.write(issue(authority, ["127.0.0.1"], time.time()), authority.certificate)
        handler: Any = _StandInApi
        handler.authority, handler.logins = authority, self.logins
        if self.context is None:
            self.context = credentials.server_context()
        else:
            credentials.reload(self.context)
        self.authority = authority


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    served = Node(tmp_path)
    yield served
    served.server.shutdown()


_ENVIRONMENT = ("HERON_URL", "HERON_TOKEN", "HERON_CA_FILE")  # unset: only the saved login


def heron(args: list[str], config: Path, stdin: str = "") -> tuple[int, str]:
    """Run `heron` as its entry point does; the exit code and stderr."""
    runner = CliRunner()
    code: Any = 0
    kept, client.CONFIG = client.CONFIG, config  # read once, when the CLI is imported
    try:
        with runner.isolation(input=stdin, env=dict.fromkeys(_ENVIRONMENT)) as (_, err, _):
            try:
                main.main(args)
            except SystemExit as exc:
                code = exc.code
            sys.stderr.flush()
            return code, err.getvalue().decode()
    finally:
        client.CONFIG = kept


def test_the_first_login_shows_the_fingerprint_and_sends_nothing_unless_confirmed(
    node: Node, tmp_path: Path
) -> None:
    config = tmp_path / "cli.json"
    shown = fingerprint(node.authority.certificate)
    login = ["login", "--url", node.url, "--password", "secret"]
    code, err = heron(login, config, stdin="n\n")
    assert code == 1 and shown in err and "not trusted, nothing sent" in err
    assert node.logins == [] and not config.exists()

    code, err = heron(login, config, stdin="y\n")
    assert code == 0 and shown in err, err
    assert node.logins == ["secret"]
    assert json.loads(config.read_text())["pins"] == {node.url: node.authority.certificate}
    # Known now: no question, and later commands verify the node against the pinned CA.
    assert heron(login, config) == (0, "")
    assert heron(["node", "list"], config) == (0, "")


def test_a_changed_ca_is_refused_with_one_line(node: Node, tmp_path: Path) -> None:
    config = tmp_path / "cli.json"
    assert heron(["login", "--url", node.url, "--password", "x", "--yes"], config)[0] == 0
    node.use(make_authority("impostor", time.time()))
    new = fingerprint(node.authority.certificate)

    code, err = heron(["node", "list"], config)
    assert code == 1 and len(err.splitlines()) == 1, err
    assert "refused: its certificate is not signed by the pinned cluster CA" in err

    login = ["login", "--url", node.url, "--password", "x"]
    for extra in ([], ["--yes"]):  # --yes trusts a first CA, never a changed one
        code, err = heron([*login, *extra], config)
        assert code == 1 and len(err.splitlines()) == 1, err
        assert "changed" in err and new in err
    assert node.logins == ["x"]  # the password went to the first CA's node only

    # Naming the new CA's fingerprint is how an administrator accepts the change.
    assert heron([*login, "--ca-fingerprint", new], config)[0] == 0
    assert heron(["node", "list"], config) == (0, "")


def test_a_fingerprint_or_a_ca_file_given_is_checked(node: Node, tmp_path: Path) -> None:
    config = tmp_path / "cli.json"
    login = ["login", "--url", node.url, "--password", "x"]
    wrong = ":".join(["AB"] * 32)
    code, err = heron([*login, "--ca-fingerprint", wrong], config)
    assert code == 1 and f"not {wrong}: refused" in err and node.logins == []

    other = tmp_path / "other-ca.pem"
    other.write_text(make_authority("other", time.time()).certificate)
    code, err = heron([*login, "--ca-file", str(other)], config)
    assert code == 1 and "refused" in err and node.logins == [], err

    mine = tmp_path / "ca.pem"
    mine.write_text(node.authority.certificate)
    assert heron([*login, "--ca-file", str(mine)], config) == (0, "")
    assert node.logins == ["x"]
