"""Authentication: passwords (argon2), bearer tokens stored by hash, and role checks."""

import hashlib
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerifyMismatchError
from fastapi import Depends, Request

from heron.api.errors import Forbidden, NotFound, Unauthorized
from heron.configdb import ConfigDB, cas, keys
from heron.models.auth import (
    Grant,
    LoginFailures,
    Permission,
    Role,
    Scope,
    ScopeKind,
    TokenKind,
    TokenRecord,
    User,
    count_failure,
    effective_role,
    new_token,
    reachable,
    token_hash,
)
from heron.models.common import Name, new_id
from heron.models.settings import ClusterSettings, LoginSettings
from heron.models.storage import Volume
from heron.models.vm import VM, VMCreate
from heron.services.lookup import find_vm

SESSION_TTL = 12 * 3600
_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, InvalidHashError):
        return False


@dataclass(frozen=True)
class Principal:
    user: str
    role: Role | None  # cluster-wide; None: only what grants give
    token_id: str
    limit: Role | None = None  # a token made with a lower role: its most on any scope


async def issue_token(
    db: ConfigDB,
    user: User,
    kind: TokenKind,
    description: str = "",
    ttl: int | None = None,
    role: Role | None = None,
) -> tuple[str, TokenRecord]:
    """Create a token; with `role` (checked by the caller to be within the user's reach) it
    carries no more than that, cluster-wide or on any scope. Tokens with a `ttl` vanish from
    etcd with their lease when they expire."""
    cluster_role = user.role
    if role is not None and (cluster_role is None or cluster_role.rank > role.rank):
        cluster_role = role if cluster_role is not None else None
    token = new_token()
    now = time.time()
    record = TokenRecord(
        id=new_id()[:13],
        user=user.name,
        role=cluster_role,
        kind=kind,
        description=description,
        created_at=now,
        expires_at=now + ttl if ttl else None,
        limit=role,
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
    principal = Principal(record.user, record.role, record.id, record.limit)
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


Needed = Role | Permission


def suffices(role: Role | None, needed: Needed) -> bool:
    if role is None:
        return False
    return role.allows(needed) if isinstance(needed, Role) else role.may(needed)


def _name(role: Role | None) -> str:
    return role.value if role else "no cluster-wide role"


def require(needed: Needed) -> Callable[[Principal], Awaitable[Principal]]:
    """A cluster-wide check: the token's own role must have `needed`."""

    async def check(principal: Principal = Depends(authenticate)) -> Principal:
        if not suffices(principal.role, needed):
            what = "role" if isinstance(needed, Role) else "permission"
            raise Forbidden(
                f"this needs the {needed.value} {what} cluster-wide; you have "
                f"{_name(principal.role)}"
            )
        return principal

    _REFUSING.add(check)
    return check


# The checks that may answer 403 (the API contract declares it on the routes using them).
_REFUSING: set[Callable[..., object]] = set()


async def grants_of(db: ConfigDB, user: str) -> list[Grant]:
    return [e.value for e in await db.list(Grant, keys.GRANTS) if e.value.user == user]


async def check_on(
    db: ConfigDB, principal: Principal, scopes: list[Scope], needed: Needed, what: str
) -> Role | None:
    """Refuse unless the principal has `needed` on an object lying in `scopes`: 404 if the
    object is out of its sight altogether (its existence is not its business), 403 if seen
    but not allowed. The grants are read only when the cluster-wide role does not suffice."""
    if suffices(principal.role, needed):
        return principal.role
    role = effective_role(
        principal.role, await grants_of(db, principal.user), principal.user, scopes, principal.limit
    )
    if role is None:
        raise NotFound(f"no {what}")
    if not suffices(role, needed):
        kind = "role" if isinstance(needed, Role) else "permission"
        raise Forbidden(f"{what}: this needs the {needed.value} {kind}; you are {role.value}")
    return role


def vm_scopes(vm: VM) -> list[Scope]:
    """The scopes a VM lies in: its group (a VM without one is reached cluster-wide only)."""
    return [("group", vm.spec.group)] if vm.spec.group else []


def on_vm(needed: Needed) -> Callable[..., Awaitable[Principal]]:
    """A check on the VM the path names (`{ref}`): the cluster-wide role, or a grant on the
    VM's group."""

    async def check(
        ref: Name, request: Request, principal: Principal = Depends(authenticate)
    ) -> Principal:
        if not suffices(principal.role, needed):
            db: ConfigDB = request.app.state.ctx.db
            vm = (await find_vm(db, ref)).value
            await check_on(db, principal, vm_scopes(vm), needed, f"VM {ref!r}")
        return principal

    _REFUSING.add(check)
    return check


def on_named(kind: ScopeKind, needed: Needed) -> Callable[..., Awaitable[Principal]]:
    """A check on the pool or switch the path names (`{name}`): the cluster-wide role, or a
    grant on it."""

    async def check(
        name: Name, request: Request, principal: Principal = Depends(authenticate)
    ) -> Principal:
        if not suffices(principal.role, needed):
            db: ConfigDB = request.app.state.ctx.db
            await check_on(db, principal, [(kind, name)], needed, f"{kind} {name!r}")
        return principal

    _REFUSING.add(check)
    return check


async def reachable_names(db: ConfigDB, principal: Principal, kind: ScopeKind) -> set[str] | None:
    """The pools or switches the principal sees; None: all (a cluster-wide viewer)."""
    if suffices(principal.role, Role.viewer):
        return None
    grants = await grants_of(db, principal.user)
    return reachable(principal.role, grants, principal.user, kind, Role.viewer, principal.limit)


async def reachable_groups(db: ConfigDB, principal: Principal) -> set[str] | None:
    """The VM groups whose VMs the principal sees; None: every VM (cluster-wide viewer)."""
    if suffices(principal.role, Role.viewer):
        return None
    grants = await grants_of(db, principal.user)
    return reachable(principal.role, grants, principal.user, "group", Role.viewer, principal.limit)


async def may_use_group(db: ConfigDB, principal: Principal, group: str | None) -> None:
    """Refuse putting a VM in `group` (None: in no group) unless the principal operates it."""
    if suffices(principal.role, Role.operator):
        return
    if group is None:
        raise Forbidden("a VM outside any group needs the operator role cluster-wide")
    await check_on(db, principal, [("group", group)], Role.operator, f"group {group!r}")


async def may_use_volumes(db: ConfigDB, principal: Principal, volumes: list[str]) -> None:
    """Refuse giving a VM existing volumes (their data) unless the principal operates their
    pools: an operator of a group must not read another group's disks by attaching them."""
    if suffices(principal.role, Role.operator):
        return
    for ref in volumes:
        pool, _, _ = ref.rpartition("/")
        if not pool:
            found = await db.get(Volume, keys.volume(ref))
            if found is None:
                continue  # the service answers 422 for a volume that does not exist
            pool = found.value.pool
        await check_on(db, principal, [("pool", pool)], Role.operator, f"pool {pool!r}")


async def may_create_vms(db: ConfigDB, principal: Principal, body: VMCreate) -> None:
    await may_use_group(db, principal, body.group)
    await may_use_volumes(db, principal, [d.volume for d in body.disks if d.volume is not None])


async def signed_in(principal: Principal = Depends(authenticate)) -> Principal:
    """Any valid token: the route checks the scopes itself (and may refuse with 403)."""
    return principal


_REFUSING.add(signed_in)
viewer = require(Role.viewer)
operator = require(Role.operator)
admin = require(Role.admin)
console = require(Permission.console)
vm_viewer = on_vm(Role.viewer)
vm_operator = on_vm(Role.operator)
vm_console = on_vm(Permission.console)
pool_viewer = on_named("pool", Role.viewer)
pool_operator = on_named("pool", Role.operator)
switch_admin = on_named("switch", Role.admin)
REFUSING = frozenset(_REFUSING - {viewer})
