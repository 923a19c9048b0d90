"""Freeze hooks inside a guest, as the API shows and takes them (installed through the agent)."""

from typing import Annotated

from pydantic import BaseModel, Field, StringConstraints

HOOK_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
MAX_HOOK_BYTES = 256 * 1024

HookName = Annotated[str, StringConstraints(pattern=HOOK_NAME_PATTERN, max_length=64)]


class GuestHook(BaseModel):
    name: str = Field(description="the file in /etc/qemu/fsfreeze-hook.d; hooks run in name order")
    size: int = Field(description="bytes")
    executable: bool = Field(description="the runner skips a hook that is not")
    sha256: str


class GuestHookList(BaseModel):
    vm: str
    runner: bool = Field(description="/etc/qemu/fsfreeze-hook is there to run the hooks")
    hooks: list[GuestHook]


class HookInstall(BaseModel):
    """A freeze hook: a script the guest agent's runner calls with `freeze` before the guest's
    filesystems are frozen (a non-zero exit aborts the snapshot) and `thaw` after."""

    model_config = {"extra": "forbid"}
    script: str = Field(
        min_length=1,
        max_length=MAX_HOOK_BYTES,
        description="the script's text, starting with its #! line",
    )
