"""heron support: diagnostic bundles for the support team, and where they are mailed."""

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from heron.cli.client import Client, fail
from heron.cli.options import Json
from heron.cli.output import emit, size

app = typer.Typer(no_args_is_help=True, help="Diagnostic bundles for the support team.")

BUNDLE_COLUMNS = [
    ("name", lambda b: b["name"]),
    ("node", lambda b: b["node"]),
    ("size", lambda b: size(b["size"])),
    ("created", lambda b: _when(b["created_at"])),
    ("by", lambda b: b["created_by"]),
    ("missing", lambda b: ",".join(b.get("missing") or [])),
]

Output = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="where to write the .tar.gz (default: its own name)"),
]


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def download(client: Client, name: str, output: Path | None) -> Path:
    """Write bundle `name` to `output` (or ./name); the path written."""
    target = output or Path(name)
    try:
        with client.http.stream("GET", f"/support/bundles/{name}") as reply:
            if reply.status_code >= 400:
                reply.read()
                try:
                    message = reply.json().get("message") or reply.text
                except ValueError:
                    message = reply.text
                fail(f"{reply.status_code}: {message}")
            with open(target, "wb") as file:
                for chunk in reply.iter_bytes():
                    file.write(chunk)
    except OSError as exc:
        fail(f"cannot write {target}: {exc.strerror or exc}")
    return target


@app.command("bundle")
def support_bundle(
    send: Annotated[
        bool, typer.Option("--send", help="mail it to the support address once built")
    ] = False,
    output: Output = None,
    as_json: Json = False,
) -> None:
    """Build a bundle (with a progress bar), then download it; with --send, mail it too."""
    client = Client()
    task = client.post("/support/bundles", json={"send": send})
    done = client.wait_task(task["id"], show=not as_json)
    result: dict[str, Any] = done.get("result") or {}
    name = result.get("bundle")
    if not name:
        fail(f"task {task['id']} named no bundle")
    path = download(client, name, output)
    reply = {**result, "file": str(path)}
    emit(
        reply,
        as_json,
        [
            ("bundle", lambda r: r["bundle"]),
            ("size", lambda r: size(r["size"])),
            ("file", lambda r: r["file"]),
            ("missing", lambda r: ",".join(r.get("missing") or [])),
            ("sent to", lambda r: r.get("sent_to") or ""),
        ],
    )


@app.command("list")
def support_list(as_json: Json = False) -> None:
    """The bundles kept on every live node, newest first."""
    emit(Client().get("/support/bundles"), as_json, BUNDLE_COLUMNS)


@app.command("get")
def support_get(name: str, output: Output = None) -> None:
    """Download a bundle."""
    typer.echo(str(download(Client(), name, output)))


@app.command("send")
def support_send(name: str, as_json: Json = False) -> None:
    """Mail a bundle to the support address."""
    reply = Client().post(f"/support/bundles/{name}/send")
    emit(reply, as_json, [("name", lambda r: r["name"]), ("to", lambda r: r["to"]),
                          ("channel", lambda r: r["channel"])])  # fmt: skip


@app.command("delete")
def support_delete(name: str) -> None:
    Client().request("DELETE", f"/support/bundles/{name}")


@app.command("settings")
def support_settings(
    address: Annotated[
        str | None, typer.Option(help="the support team's mail address ('' for none)")
    ] = None,
    channel: Annotated[
        str | None, typer.Option(help="the SMTP channel mail goes through ('' for none)")
    ] = None,
    on_critical: Annotated[
        bool | None,
        typer.Option(
            "--on-critical/--not-on-critical",
            help="mail a bundle when a critical alert fires (at most once an hour)",
        ),
    ] = None,
    as_json: Json = False,
) -> None:
    """Where bundles are mailed: without options, the settings; with them, change them."""
    client = Client()
    settings = client.get("/cluster/settings")
    current = dict(settings.get("support") or {})
    changes: dict[str, Any] = {}
    if address is not None:
        changes["address"] = address or None
    if channel is not None:
        changes["channel"] = channel or None
    if on_critical is not None:
        changes["on_critical"] = on_critical
    if changes:
        current.update(changes)
        settings = client.request("PUT", "/cluster/settings", json={"support": current})
        current = settings["support"]
    emit(
        current,
        as_json,
        [
            ("address", lambda s: s.get("address") or ""),
            ("channel", lambda s: s.get("channel") or ""),
            ("on critical", lambda s: "yes" if s.get("on_critical") else "no"),
        ],
    )
