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


class LoginFailures(Record):
    """Failed logins of one user name or one client address in the current window.

    Kept in the ConfigDB (every node counts into the same record, with compare-and-swap) under
    a lease that outlives the window and the lock, so records of names nobody tries any more
    vanish by themselves. `id` is the record's key under LOGIN_FAILURES: a hash of kind and
    subject, since a tried user name may be any string.
    """

    id: str
    kind: Literal["user", "address"]
    subject: str
    count: int = Field(ge=1)
    first_at: float
    last_at: float
    locked_until: float | None = None

    def locked(self, now: float) -> bool:
        return self.locked_until is not None and now < self.locked_until


def count_failure(
    previous: "LoginFailures | None",
    *,
    id: str,
    kind: Literal["user", "address"],
    subject: str,
    now: float,
    limit: int,
    window: float,
    lockout: float,
) -> LoginFailures:
    """The record after one more failure: a fresh count once the window or a lock has passed,
    and a lock when the count reaches `limit`."""
    stale = previous is None or (
        now >= previous.locked_until
        if previous.locked_until is not None
        else now - previous.first_at > window
    )
    if stale or previous is None:
        count, first_at = 1, now
    else:
        count, first_at = previous.count + 1, previous.first_at
    locked_until = previous.locked_until if previous and not stale else None
    if locked_until is None and count >= limit:
        locked_until = now + lockout
    return LoginFailures(
        id=id,
        kind=kind,
        subject=subject,
        count=count,
        first_at=first_at,
        last_at=now,
        locked_until=locked_until,
    )


def password_problem(
    user: str, password: str, *, min_length: int, refuse_user_name: bool
) -> str | None:
    """Why `password` is refused for `user` under the cluster's rules, or None."""
    if len(password) < min_length:
        return f"must be at least {min_length} characters long"
    if refuse_user_name and password.casefold() == user.casefold():
        return "must not be the user name"
    return None


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
