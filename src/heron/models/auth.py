"""Users, roles and the tokens that carry them."""

from enum import StrEnum
from typing import Literal

from pydantic import Field

from heron.models.common import Name, Record


class Role(StrEnum):
    """Roles nest: an admin may do all an operator may, an operator all a viewer may."""

    viewer = "viewer"
    operator = "operator"
    admin = "admin"

    @property
    def rank(self) -> int:
        return ["viewer", "operator", "admin"].index(self.value)

    def allows(self, needed: "Role") -> bool:
        return self.rank >= needed.rank

    @property
    def permissions(self) -> frozenset["Permission"]:
        return ROLE_PERMISSIONS[self]

    def may(self, permission: "Permission") -> bool:
        return permission in ROLE_PERMISSIONS[self]


class Permission(StrEnum):
    """What a role lets its holder do. Most checks still ask for a role (roles nest); a
    permission exists where the nesting is not the whole story.

    `console` is one: the serial log holds whatever the guest printed (boot messages, a
    password typed at a prompt, keys), and the serial and graphical consoles type into the
    guest. Viewers read a VM's configuration and state, not its screen.
    """

    read = "read"
    console = "console"
    operate = "operate"
    administer = "administer"


ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.viewer: frozenset({Permission.read}),
    Role.operator: frozenset({Permission.read, Permission.console, Permission.operate}),
    Role.admin: frozenset(Permission),
}


class User(Record):
    name: Name
    role: Role
    password_hash: str = Field(repr=False)
    created_at: float


# A session ends with its lease (a login); an API token lives until revoked or it expires.
TokenKind = Literal["session", "api"]


class TokenRecord(Record):
    """Stored under the token's SHA-256, never the token itself."""

    id: str
    user: Name
    role: Role
    kind: TokenKind
    description: str = ""
    created_at: float
    expires_at: float | None = None
