"""heron support: a bundle is asked for, followed to its end and downloaded to the file named;
the list and the settings read and write what the API serves."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from heron.cli import main

NAME = "heron-support-n1-20261205T070000Z.tar.gz"
DATA = b"\x1f\x8b pretend gzip " * 100


class _Api(BaseHTTPRequestHandler):
    seen: list[tuple[str, str, Any]] = []
    settings: dict[str, Any] = {"drs": {"mode": "off"}, "support": {"address": None}}

    def _reply(self, status: int, body: Any, kind: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        length = int(self.headers.get("content-length") or 0)
        return json.loads(self.rfile.read(length)) if length else None

    def do_POST(self) -> None:
        self.seen.append(("POST", self.path, self._body()))
        if self.path == "/api/v1/support/bundles":
            self._reply(202, {"id": "t1", "kind": "support.bundle", "state": "queued"})
        else:
            self._reply(404, {"message": "no"})

    def do_PUT(self) -> None:
        body = self._body()
        self.seen.append(("PUT", self.path, body))
        # As the API does: the sections given replace theirs, the others are kept.
        type(self).settings = {**self.settings, **body}
        self._reply(200, self.settings)

    def do_GET(self) -> None:
        self.seen.append(("GET", self.path, None))
        if self.path == "/api/v1/tasks/t1":
            self._reply(
                200,
                {
                    "id": "t1",
                    "kind": "support.bundle",
                    "state": "succeeded",
                    "progress": 1.0,
                    "result": {"bundle": NAME, "node": "n1", "size": len(DATA), "missing": ["n3"]},
                },
            )
        elif self.path == f"/api/v1/support/bundles/{NAME}":
            self._reply(200, DATA, "application/gzip")
        elif self.path == "/api/v1/support/bundles":
            self._reply(
                200,
                [
                    {
                        "name": NAME,
                        "node": "n1",
                        "size": 2048,
                        "created_at": 0,
                        "created_by": "alice",
                        "missing": [],
                    }
                ],
            )
        elif self.path == "/api/v1/cluster/settings":
            self._reply(200, self.settings)
        else:
            self._reply(404, {"message": f"no {self.path}"})

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def api() -> Iterator[str]:
    _Api.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def heron(url: str, args: list[str]) -> tuple[int, str, str]:
    runner = CliRunner()
    code: Any = 0
    env = {"HERON_URL": url, "HERON_TOKEN": "t", "HERON_CONFIG": "/nonexistent/cli.json"}
    with runner.isolation(env=env) as (out, err, _):
        try:
            main.main(args)
        except SystemExit as exc:
            code = exc.code
        sys.stdout.flush()
        sys.stderr.flush()
        return code, out.getvalue().decode(), err.getvalue().decode()


def test_bundle_builds_follows_the_task_and_downloads(api: str, tmp_path: Path) -> None:
    target = tmp_path / "b.tar.gz"
    code, out, err = heron(api, ["support", "bundle", "--send", "-o", str(target), "--json"])
    assert (code, err) == (0, "")
    assert target.read_bytes() == DATA
    reply = json.loads(out)
    assert reply["bundle"] == NAME and reply["file"] == str(target) and reply["missing"] == ["n3"]
    assert ("POST", "/api/v1/support/bundles", {"send": True}) in _Api.seen


def test_list_and_a_missing_bundle(api: str, tmp_path: Path) -> None:
    code, out, _ = heron(api, ["support", "list"])
    assert code == 0 and NAME in out and "alice" in out and "2.0 KiB" in out
    missing = "heron-support-n1-20261205T080000Z.tar.gz"
    code, _, err = heron(api, ["support", "get", missing, "-o", str(tmp_path / "x")])
    assert code == 1 and err.startswith("heron: 404:")


def test_settings_change_only_what_is_given(api: str) -> None:
    code, out, _ = heron(api, ["support", "settings", "--address", "s@v.example", "--json"])
    assert code == 0 and json.loads(out)["address"] == "s@v.example"
    put = [body for method, _, body in _Api.seen if method == "PUT"]
    # Only its own section: a change of another section in between is not undone.
    assert put == [{"support": {"address": "s@v.example"}}]
