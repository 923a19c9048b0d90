"""Authentication: passwords (argon2), bearer tokens stored by hash, and role checks."""

import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerifyMismatchError
from fastapi import Depends, Request

from heron.api.errors import Forbidden, Unauthorized
from heron.configdb import ConfigDB, keys
from heron.models.auth import Permission, Role, TokenKind, TokenRecord, User
from heron.models.common import new_id

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
    db: ConfigDB, user: User, kind: TokenKind, description: str = "", ttl: int | None = None
) -> tuple[str, TokenRecord]:
    """Create a token; session tokens vanish from etcd with their lease when they expire."""
    token = new_token()
    now = time.time()
    record = TokenRecord(
        id=new_id()[:13],
        user=user.name,
        role=user.role,
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
