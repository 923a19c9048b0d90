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
