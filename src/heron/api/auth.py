"""Authentication: passwords (argon2), bearer tokens stored by hash, and role checks."""

import hashlib
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerifyMismatchError
from fastapi import Depends, Request

from heron.api.errors import Forbidden, Unauthorized
from heron.configdb import ConfigDB, cas, keys
from heron.models.auth import (
    LoginFailures,
    Permission,
    Role,
    TokenKind,
    TokenRecord,
    User,
    count_failure,
)
from heron.models.common import new_id
from heron.models.settings import ClusterSettings, LoginSettings

SESSION_TTL = 12 * 3600
_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, InvalidHashError):
        return False


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "hrn_" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Principal:
    user: str
    role: Role
    token_id: str


async def issue_token(
    db: ConfigDB,
    user: User,
    kind: TokenKind,
    description: str = "",
    ttl: int | None = None,
    role: Role | None = None,
) -> tuple[str, TokenRecord]:
    """Create a token carrying `role` (the user's own by default, never more); tokens with a
    `ttl` vanish from etcd with their lease when they expire."""
    if role is not None and not user.role.allows(role):
        raise ValueError(f"role {role.value} is above {user.name}'s {user.role.value}")
    token = new_token()
    now = time.time()
    record = TokenRecord(
        id=new_id()[:13],
        user=user.name,
        role=role or user.role,
        kind=kind,
        description=description,
        created_at=now,
        expires_at=now + ttl if ttl else None,
    )
    lease = await db.grant(ttl) if ttl else 0
    await db.create(keys.token(token_hash(token)), record, lease=lease)
    return token, record


async def authenticate(request: Request) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("missing bearer token: log in at POST /api/v1/auth/login")
    db: ConfigDB = request.app.state.ctx.db
    entry = await db.get(TokenRecord, keys.token(token_hash(token.strip())))
    if entry is None:
        raise Unauthorized("invalid or expired token")
    record = entry.value
    if record.expires_at is not None and record.expires_at < time.time():
        raise Unauthorized("invalid or expired token")
    principal = Principal(record.user, record.role, record.id)
    request.state.principal = principal
    return principal


async def login_settings(db: ConfigDB) -> LoginSettings:
    found = await db.get(ClusterSettings, keys.SETTINGS)
    return (found.value if found else ClusterSettings()).login


def failures_id(kind: Literal["user", "address"], subject: str) -> str:
    """The key of a name's or an address's failures: a hash, as a tried name may be anything."""
    return hashlib.sha256(f"{kind}\0{subject}".encode()).hexdigest()[:24]


async def login_locks(db: ConfigDB, user: str, address: str | None) -> list[LoginFailures]:
    """The locks that refuse this login now: on the user name, on the client address."""
    now = time.time()
    subjects: list[tuple[Literal["user", "address"], str]] = [("user", user)]
    if address:
        subjects.append(("address", address))
    found = [
        await db.get(LoginFailures, keys.login_failures(failures_id(k, s))) for k, s in subjects
    ]
    return [e.value for e in found if e is not None and e.value.locked(now)]


async def count_login_failure(
    db: ConfigDB, settings: LoginSettings, kind: Literal["user", "address"], subject: str
) -> tuple[LoginFailures, bool]:
    """Count one failed login into the cluster-wide record of `subject`: the new record, and
    whether this failure locked it. Concurrent failures on several nodes all count (CAS)."""
    record_id = failures_id(kind, subject)
    key = keys.login_failures(record_id)
    limit = settings.max_failures if kind == "user" else settings.max_failures_per_address

    async def attempt() -> tuple[LoginFailures, bool]:
        entry = await db.get(LoginFailures, key)
        now = time.time()
        record = count_failure(
            entry.value if entry else None,
            id=record_id,
            kind=kind,
            subject=subject,
            now=now,
            limit=limit,
            window=settings.window,
            lockout=settings.lockout,
        )
        # The record matters until its window has passed and its lock (if any) has ended.
        until = max(record.first_at + settings.window, record.locked_until or 0)
        lease = await db.grant(max(1, math.ceil(until - now)) + 1)
        await db.put(key, record, revision=entry.revision if entry else 0, lease=lease)
        before = entry.value.locked_until if entry else None
        return record, record.locked_until is not None and record.locked_until != before

    return await cas.retry(attempt, key)


async def clear_login_failures(
    db: ConfigDB, kind: Literal["user", "address"], subject: str
) -> None:
    await db.delete(keys.login_failures(failures_id(kind, subject)))


def require(role: Role) -> Callable[[Principal], Awaitable[Principal]]:
    async def check(principal: Principal = Depends(authenticate)) -> Principal:
        if not principal.role.allows(role):
            raise Forbidden(f"this needs the {role.value} role; you are {principal.role.value}")
        return principal

    return check


def require_permission(permission: Permission) -> Callable[[Principal], Awaitable[Principal]]:
    async def check(principal: Principal = Depends(authenticate)) -> Principal:
        if not principal.role.may(permission):
            raise Forbidden(
                f"this needs the {permission.value} permission, which the "
                f"{principal.role.value} role does not have"
            )
        return principal

    return check


viewer = require(Role.viewer)
operator = require(Role.operator)
admin = require(Role.admin)
console = require_permission(Permission.console)
# The checks that may answer 403 (the API contract declares it on the routes using them).
REFUSING = frozenset({operator, admin, console})
