"""A stand-in for Ceph's `rbd` tool, which cannot run on these machines (no Ceph cluster).

Run as a program (`python tests/fakes/rbd.py <rbd's arguments>`; `install` puts it on a PATH
under the name `rbd`). Only the standard library is used: it runs outside the test process.

It keeps a pool's images in a JSON file (`$HERON_STANDIN_RBD_STATE`) and answers the
commands the rbd pool driver runs the way rbd does, as Ceph's sources have them
(src/tools/rbd/action/*.cc): `info`, `snap ls`, `du` and `children` with `--format json` in
rbd's shapes (a snapshot's `protected` is the string "true" or "false", its `timestamp`
ctime's text), failures as rbd reports them ("rbd: ...: (errno) text" on stderr, exit
status 1), and the rules that make clones safe: a clone only of a protected snapshot (clone
format 1), no unprotecting a snapshot that clones read (EBUSY), no removing a protected
snapshot (EBUSY), nor an image that has snapshots (ENOTEMPTY). An image's data is a token
(`data`): a snapshot keeps its image's, a rollback brings it back, a clone reads its parent
snapshot's, a copy copies it (and the image's metadata, `image-meta`, as rbd does). `fail`
maps a command line (without options) to the error it gets instead; `cut` lists command
lines killed (SIGKILL) halfway: a `cp` so cut leaves its target made, holding part of the
data. Every command line is appended to `journal` in the state file.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

STATE_VARIABLE = "HERON_STANDIN_RBD_STATE"
WITH_VALUE = {"--id", "-c", "-m", "--format", "--size"}
FEATURES = ["layering", "exclusive-lock", "object-map", "fast-diff", "deep-flatten"]


def install(directory: Path, state: Path) -> Path:
    """Put an executable named rbd into `directory` that runs this stand-in on `state`."""
    directory.mkdir(parents=True, exist_ok=True)
    program = directory / "rbd"
    here = Path(__file__).resolve()
    program.write_text(
        f'#!/bin/sh\n{STATE_VARIABLE}="{state}" exec "{sys.executable}" -S "{here}" "$@"\n'
    )
    program.chmod(0o755)
    if not state.exists():
        state.write_text(
            json.dumps({"images": {}, "next_id": 1, "fail": {}, "cut": [], "journal": []})
        )
    return program


class Failed(Exception):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def fail(what: str, code: int, text: str) -> Failed:
    return Failed(f"rbd: {what}: ({code}) {text}", code)


def split(spec: str) -> tuple[str, str | None]:
    image, _, snap = spec.partition("@")
    return image, snap or None


class Cut(Exception):
    """The command is killed here (its state so far is kept)."""


class Rbd:
    def __init__(self, state: dict[str, Any]):
        self.state = state
        self.images: dict[str, dict[str, Any]] = state["images"]

    def image(self, name: str) -> dict[str, Any]:
        if name not in self.images:
            raise fail(f"error opening image {name}", 2, "No such file or directory")
        return self.images[name]

    def snap(self, spec: str) -> tuple[dict[str, Any], dict[str, Any]]:
        name, snap = split(spec)
        image = self.image(name)
        for taken in image["snaps"]:
            if taken["name"] == snap:
                return image, taken
        raise fail(f"error setting snapshot context {spec}", 2, "No such file or directory")

    def children(self, spec: str) -> list[str]:
        name, snap = split(spec)
        return [
            child for child, image in self.images.items()
            if image.get("parent") == {"image": name, "snapshot": snap}
        ]  # fmt: skip

    def run(self, args: list[str], options: dict[str, str]) -> Any:
        verb = args[:2] if args[0] in ("snap", "image-meta") else args[:1]
        rest = args[len(verb) :]
        self.cut = " ".join(args) in self.state.get("cut", [])
        method = "do_" + "_".join(verb).replace("-", "_")
        return getattr(self, method)(*rest, **{"options": options})

    def do_info(self, spec: str, options: dict[str, str]) -> Any:
        image = self.image(spec)
        name = spec.partition("/")[2]
        found = {
            "name": name, "size": image["size"], "objects": -(-image["size"] // 4194304),
            "order": 22, "object_size": 4194304, "block_name_prefix": "rbd_data.1",
            "format": 2, "features": image["features"], "op_features": [], "flags": [],
        }  # fmt: skip
        parent = image.get("parent")
        if parent:
            ppool, _, pimage = parent["image"].partition("/")
            found["parent"] = {
                "pool": ppool, "pool_namespace": "", "image": pimage,
                "snapshot": parent["snapshot"], "overlap": image["size"],
            }  # fmt: skip
        return found

    def do_snap_ls(self, spec: str, options: dict[str, str]) -> Any:
        return [
            {"id": s["id"], "name": s["name"], "size": s["size"],
             "protected": "true" if s["protected"] else "false", "timestamp": s["timestamp"]}
            for s in self.image(spec)["snaps"]
        ]  # fmt: skip

    def do_snap_create(self, spec: str, options: dict[str, str]) -> None:
        name, snap = split(spec)
        image = self.image(name)
        if any(s["name"] == snap for s in image["snaps"]):
            raise fail("failed to create snapshot", 17, "File exists")
        image["snaps"].append(
            {"id": self.state["next_id"], "name": snap, "size": image["size"],
             "protected": False, "timestamp": time.ctime(), "data": image["data"],
             "used": image.get("written", 0)}
        )  # fmt: skip
        image["written"] = 0
        self.state["next_id"] += 1

    def do_snap_rm(self, spec: str, options: dict[str, str]) -> None:
        image, taken = self.snap(spec)
        if taken["protected"]:
            raise Failed(f"rbd: snapshot '{taken['name']}' is protected from removal.", 16)
        image["snaps"].remove(taken)

    def do_snap_rollback(self, spec: str, options: dict[str, str]) -> None:
        image, taken = self.snap(spec)
        image["data"], image["size"] = taken["data"], taken["size"]

    def do_snap_protect(self, spec: str, options: dict[str, str]) -> None:
        _, taken = self.snap(spec)
        if taken["protected"]:
            raise Failed("rbd: snap is already protected", 16)
        taken["protected"] = True

    def do_snap_unprotect(self, spec: str, options: dict[str, str]) -> None:
        _, taken = self.snap(spec)
        if not taken["protected"]:
            raise Failed("rbd: snap is already unprotected", 22)
        if self.children(spec):
            raise fail("unprotecting snap failed", 16, "Device or resource busy")
        taken["protected"] = False

    def do_snap_purge(self, spec: str, options: dict[str, str]) -> None:
        image = self.image(spec)
        image["snaps"] = [s for s in image["snaps"] if s["protected"]]

    def do_children(self, spec: str, options: dict[str, str]) -> Any:
        self.snap(spec)
        found = []
        for child in self.children(spec):
            pool, _, name = child.partition("/")
            found.append({"pool": pool, "pool_namespace": "", "image": name,
                          "id": f"id-{name}", "trash": False})  # fmt: skip
        return found

    def do_du(self, spec: str, options: dict[str, str]) -> Any:
        image = self.image(spec)
        name = spec.partition("/")[2]
        rows = [
            {"name": name, "id": f"id-{name}", "snapshot": s["name"], "snapshot_id": s["id"],
             "provisioned_size": s["size"], "used_size": s["used"]}
            for s in image["snaps"]
        ]  # fmt: skip
        rows.append({"name": name, "id": f"id-{name}", "provisioned_size": image["size"],
                     "used_size": image.get("written", 0)})  # fmt: skip
        return {"images": rows}

    def new_image(self, name: str, size: int, data: str, parent: Any = None) -> None:
        if name in self.images:
            raise fail("create error", 17, "File exists")
        self.images[name] = {"size": size, "data": data, "features": list(FEATURES),
                             "snaps": [], "parent": parent}  # fmt: skip

    def do_clone(self, source: str, target: str, options: dict[str, str]) -> None:
        _, taken = self.snap(source)
        if not taken["protected"]:
            raise fail("clone error", 22, "Invalid argument")
        name, snap = split(source)
        self.new_image(target, taken["size"], taken["data"], {"image": name, "snapshot": snap})

    def do_cp(self, source: str, target: str, options: dict[str, str]) -> None:
        name, snap = split(source)
        found = self.snap(source)[1] if snap else self.image(name)
        if self.cut:
            self.new_image(target, found["size"], f"part of {found['data']}")
            sys.stderr.write("\rImage copy: 42% complete...")
            raise Cut
        self.new_image(target, found["size"], found["data"])
        self.images[target]["meta"] = dict(self.image(name).get("meta", {}))
        if "no-progress" not in options:
            for percent in (25, 50, 75):
                sys.stderr.write(f"\rImage copy: {percent}% complete...")
            sys.stderr.write("\rImage copy: 100% complete...done.\n")

    def do_resize(self, spec: str, options: dict[str, str]) -> None:
        size = options["--size"]
        self.image(spec)["size"] = int(size[:-1]) if size.endswith("B") else int(size) << 20

    def do_rename(self, source: str, target: str, options: dict[str, str]) -> None:
        image = self.image(source)
        if source.partition("/")[0] != target.partition("/")[0]:
            raise Failed("rbd: mv/rename across pools not supported", 22)
        if target in self.images:
            raise fail("rename error", 17, "File exists")
        self.images[target] = image
        del self.images[source]

    do_mv = do_rename

    def do_image_meta_set(self, spec: str, key: str, value: str, options: dict[str, str]) -> None:
        self.image(spec).setdefault("meta", {})[key] = value

    def do_image_meta_get(self, spec: str, key: str, options: dict[str, str]) -> None:
        meta = self.image(spec).get("meta", {})
        if key not in meta:
            sys.stderr.write(f"failed to get metadata {key} of image : ")
            sys.stderr.write("(2) No such file or directory\n")
            raise fail("getting metadata failed", 2, "No such file or directory")
        sys.stdout.write(f"{meta[key]}\n")

    def do_rm(self, spec: str, options: dict[str, str]) -> None:
        image = self.image(spec)
        if image["snaps"]:
            raise Failed(
                "rbd: image has snapshots - these must be deleted with 'rbd snap purge' "
                "before the image can be removed.", 39,
            )  # fmt: skip
        del self.images[spec]


def main(argv: list[str]) -> int:
    path = Path(os.environ[STATE_VARIABLE])
    state = json.loads(path.read_text())
    state["journal"].append(argv)
    options: dict[str, str] = {}
    args: list[str] = []
    words = iter(argv)
    for word in words:
        if word in WITH_VALUE:
            options[word] = next(words)
        elif word.startswith("-"):
            options[word.lstrip("-")] = "1"
        else:
            args.append(word)
    code = 0
    try:
        planned = state["fail"].get(" ".join(args))
        if planned:
            raise Failed(planned, 5)
        found = Rbd(state).run(args, options)
        if options.get("--format") == "json":
            sys.stdout.write(json.dumps(found))
    except Failed as exc:
        sys.stderr.write(f"{exc}\n")
        code = 1
    except Cut:
        path.write_text(json.dumps(state))
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    path.write_text(json.dumps(state))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


class Cluster:
    """The stand-in's state as a test sees it: images to make and write, the journal."""

    def __init__(self, path: Path):
        self.path = path

    def load(self) -> dict[str, Any]:
        return json.loads(self.path.read_text())

    def save(self, state: dict[str, Any]) -> None:
        self.path.write_text(json.dumps(state))

    def image(self, spec: str) -> dict[str, Any] | None:
        return self.load()["images"].get(spec)

    def add(self, spec: str, size: int, data: str, features: list[str] | None = None) -> None:
        state = self.load()
        Rbd(state).new_image(spec, size, data)
        if features is not None:
            state["images"][spec]["features"] = features
        self.save(state)

    def write(self, spec: str, data: str, written: int) -> None:
        """A guest writes `written` bytes, leaving the image's data `data`."""
        state = self.load()
        image = state["images"][spec]
        image["data"], image["written"] = data, image.get("written", 0) + written
        self.save(state)

    def fail(self, command: str, message: str) -> None:
        state = self.load()
        state["fail"][command] = message
        self.save(state)

    def cut(self, command: str, cut: bool = True) -> None:
        """Kill `command` halfway each time it runs (or no more, `cut` False)."""
        state = self.load()
        state["cut"] = [c for c in state.get("cut", []) if c != command] + ([command] * cut)
        self.save(state)

    def journal(self) -> list[str]:
        """Each command run, its options (the connection's, --format...) left out."""
        return [" ".join(w for w in self._positional(argv)) for argv in self.load()["journal"]]

    def changes(self) -> list[str]:
        """The journal's commands that change something (no info, snap ls, du, children,
        image-meta get)."""
        reads = ("info ", "snap ls ", "du ", "children ", "image-meta get ")
        return [c for c in self.journal() if not c.startswith(reads)]

    @staticmethod
    def _positional(argv: list[str]) -> list[str]:
        words, skip = [], False
        for word in argv:
            if skip:
                skip = False
            elif word in WITH_VALUE:
                skip = True
            elif not word.startswith("-"):
                words.append(word)
        return words
