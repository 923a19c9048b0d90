"""Login, API tokens, users, passwords and login locks."""

import time
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from heron.api import auth
from heron.api.auth import Principal
from heron.api.errors import Conflict, Forbidden, Invalid, Locked, NotFound, Unauthorized
from heron.configdb import ConfigDB, keys
from heron.configdb import Conflict as StoreConflict
from heron.models.auth import (
    Grant,
    LoginFailures,
    Role,
    ScopeKind,
    TokenRecord,
    User,
    password_problem,
)
from heron.models.cluster import ClusterAuthority, JoinReply, JoinRequest
from heron.models.common import Name, Record, is_name, new_id
from heron.models.group import VMGroup
from heron.models.network import Switch
from heron.models.settings import LoginSettings
from heron.models.storage import Pool
from heron.services.cluster import join_token_hash, redeem_join_token
from heron.tls import Authority, TlsError, fingerprint
from heron.tls.certs import request_names, sign_request

router = APIRouter(tags=["auth"])


class Login(BaseModel):
    username: str = Field(min_length=1, max_length=63)
    password: str = Field(min_length=1, max_length=1024)


class TokenReply(BaseModel):
    token: str
    id: str
    user: str
    role: Role | None = Field(description="its cluster-wide role; null: only what grants give")
    expires_at: float | None


class TokenRequest(BaseModel):
    description: str = Field(default="", max_length=256)
    role: Role | None = Field(
        default=None,
        description="the role the token carries: the caller's own by default, or a lower one "
        "(a read-only token for monitoring)",
    )
    expires_in_days: int | None = Field(
        default=None, ge=1, le=3650, description="days until it expires; none: never"
    )


class UserRequest(BaseModel):
    name: Name
    role: Role | None = Field(
        description="the cluster-wide role; null: none, the user reaches only what grants give"
    )
    password: str = Field(
        min_length=8, max_length=1024, description="checked against the cluster's login rules"
    )


class PasswordChange(BaseModel):
    model_config = {"extra": "forbid"}
    password: str = Field(
        min_length=8, max_length=1024, description="checked against the cluster's login rules"
    )
    current_password: str | None = Field(
        default=None,
        max_length=1024,
        description="needed when users change their own password (administrators changing "
        "another user's do not give it)",
    )
    keep_api_tokens: bool = Field(
        default=False,
        description="keep the user's API tokens (automation) working; sessions end anyway",
    )


class PasswordReply(BaseModel):
    revoked: int = Field(
        description="tokens revoked: every session, and the API tokens unless kept"
    )


class AuthorityView(BaseModel):
    certificate: str = Field(description="the cluster CA's certificate, PEM")
    fingerprint: str = Field(description="SHA-256 of its DER, as `openssl x509 -fingerprint "
                             "-sha256` prints it")  # fmt: skip


class UserView(BaseModel):
    name: str
    role: Role | None
    created_at: float


class GrantRequest(BaseModel):
    model_config = {"extra": "forbid"}
    user: Name
    role: Role
    scope: ScopeKind = Field(description="group: its VMs; pool: its volumes; switch: its networks")
    name: Name = Field(description="the group, pool or switch")


class LockoutView(BaseModel):
    id: str
    kind: Literal["user", "address"]
    subject: str
    failures: int
    last_at: float
    locked_until: float | None = Field(description="null: counting, not locked (yet)")


def _db(request: Request) -> ConfigDB:
    return request.app.state.ctx.db


@router.get("/auth/ca", response_model=AuthorityView)
async def authority(request: Request) -> AuthorityView:
    """The cluster CA's certificate, without logging in: a client fetches it before it sends
    a password, shows its fingerprint to be confirmed (as SSH does a host key), then checks
    every node against it. Public by nature; the CA's key is never served."""
    found = await _db(request).get(ClusterAuthority, keys.CLUSTER_CA)
    if found is None:
        raise NotFound("the cluster has no CA yet")
    pem = found.value.certificate
    return AuthorityView(certificate=pem, fingerprint=fingerprint(pem))


@router.post(
    "/auth/join",
    response_model=JoinReply,
    responses={403: {"description": "The join token is unknown, used or expired"}},
)
async def join(body: JoinRequest, request: Request) -> JoinReply:
    """A new node's certificate, for a one-time join token (made by an administrator with
    `POST /cluster/join`) and the node's certificate signing request; no login (the node has
    no user), the token is the proof. The request is checked before the token is used up,
    so a malformed one does not waste it; a token works once."""
    request.state.login_user = "join-token"
    try:
        request_names(body.csr)
    except TlsError as exc:
        raise Invalid("body.csr", str(exc)) from exc
    db = _db(request)
    request.state.audit_target = f"join-token:{join_token_hash(body.token)[:12]}"
    if await redeem_join_token(db, body.token) is None:
        raise Forbidden("the join token is unknown, already used or expired")
    found = await db.get(ClusterAuthority, keys.CLUSTER_CA)
    if found is None:
        raise NotFound("the cluster has no CA yet")
    authority = Authority(found.value.certificate, found.value.key)
    certificate = sign_request(authority, body.csr, time.time())
    request.app.state.ctx.audit.record(
        user="join-token",
        method="JOIN",
        path=request.url.path,
        status=200,
        result="ok",
        client=_client(request),
        target=", ".join(request_names(body.csr)),
        reason="node certificate signed for a join token",
    )
    return JoinReply(certificate=certificate, ca_certificate=authority.certificate)


def _client(request: Request) -> str | None:
    return request.client.host if request.client else None


def _check_password(settings: LoginSettings, user: str, password: str) -> None:
    problem = password_problem(
        user,
        password,
        min_length=settings.min_password_length,
        refuse_user_name=settings.refuse_user_name,
    )
    if problem:
        raise Invalid("body.password", problem)


async def _failed(request: Request, settings: LoginSettings, user: str) -> None:
    """Count a failed login against the name and the client address; audit the locks it sets
    (the failure itself is audited as the refused request it is)."""
    db, address = _db(request), _client(request)
    subjects: list[tuple[Literal["user", "address"], str]] = [("user", user)]
    if address:
        subjects.append(("address", address))
    for kind, subject in subjects:
        record, locked_now = await auth.count_login_failure(db, settings, kind, subject)
        if locked_now:
            request.app.state.ctx.audit.record(
                user=user,
                method="LOCKOUT",
                path=request.url.path,
                status=429,
                result="locked",
                client=address,
                target=f"{kind}:{subject}",
                failures=record.count,
                locked_until=record.locked_until,
            )


@router.post(
    "/auth/login",
    response_model=TokenReply,
    responses={429: {"description": "Too many failed logins: the name or address is locked"}},
)
async def login(body: Login, request: Request) -> TokenReply:
    """A session token. Failed logins count per user name and per client address across the
    cluster; past the limits of the cluster's login settings, logins of that name (or from
    that address) are refused with 429 until the lock ends or an administrator lifts it."""
    request.state.login_user = body.username
    db = _db(request)
    locks = await auth.login_locks(db, body.username, _client(request))
    if locks:
        until = max(lock.locked_until or 0 for lock in locks)
        what = " and ".join(f"{lock.kind} {lock.subject}" for lock in locks)
        raise Locked(
            f"too many failed logins: {what} locked for {max(1, round(until - time.time()))} s "
            "more (an administrator can lift it)"
        )
    entry = await db.get(User, keys.user(body.username)) if is_name(body.username) else None
    if entry is None or not auth.verify_password(entry.value.password_hash, body.password):
        await _failed(request, await auth.login_settings(db), body.username)
        raise Unauthorized("wrong user name or password")
    await auth.clear_login_failures(db, "user", body.username)
    token, record = await auth.issue_token(
        db, entry.value, "session", "login", ttl=auth.SESSION_TTL
    )
    return TokenReply(
        token=token, id=record.id, user=record.user, role=record.role, expires_at=record.expires_at
    )


@router.get("/auth/whoami")
async def whoami(request: Request, principal: Principal = Depends(auth.authenticate)) -> Any:
    """Who the token is: its cluster-wide role, its limit, and the user's grants (which the
    token carries up to its limit)."""
    grants = await auth.grants_of(_db(request), principal.user)
    return {
        "user": principal.user,
        "role": principal.role.value if principal.role else None,
        "token": principal.token_id,
        "limit": principal.limit.value if principal.limit else None,
        "grants": [{"scope": g.scope, "name": g.name, "role": g.role.value} for g in grants],
    }


@router.get("/tokens", response_model=list[TokenRecord])
async def list_tokens(
    request: Request, principal: Principal = Depends(auth.authenticate)
) -> list[TokenRecord]:
    records = [e.value for e in await _db(request).list(TokenRecord, keys.TOKENS)]
    if principal.role != Role.admin:
        records = [r for r in records if r.user == principal.user]
    return sorted(records, key=lambda r: r.created_at)


@router.post(
    "/tokens",
    response_model=TokenReply,
    status_code=201,
    responses={404: {"description": "The caller's user no longer exists"}},
)
async def create_token(
    body: TokenRequest, request: Request, principal: Principal = Depends(auth.authenticate)
) -> TokenReply:
    """An API token for automation: carries the caller's role or a lower one, and expires
    after `expires_in_days` if given (never otherwise)."""
    db = _db(request)
    user = await db.get(User, keys.user(principal.user))
    if user is None:
        raise NotFound(f"user {principal.user} no longer exists")
    # The caller's token may itself carry less than the user's roles: never more than it.
    if body.role is not None:
        reach = [principal.role] + [g.role for g in await auth.grants_of(db, principal.user)]
        top = max((r.rank for r in reach if r is not None), default=-1)
        if principal.limit is not None:
            top = min(top, principal.limit.rank)
        if body.role.rank > top:
            raise Invalid("body.role", "above your own roles")
    role = body.role if body.role is not None else principal.limit
    ttl = body.expires_in_days * 86400 if body.expires_in_days else None
    token, record = await auth.issue_token(db, user.value, "api", body.description, ttl, role)
    return TokenReply(
        token=token, id=record.id, user=record.user, role=record.role, expires_at=record.expires_at
    )


@router.delete("/tokens/{token_id}", status_code=204)
async def revoke_token(
    token_id: Name, request: Request, principal: Principal = Depends(auth.authenticate)
) -> None:
    db = _db(request)
    for entry in await db.list(TokenRecord, keys.TOKENS):
        record = entry.value
        if record.id == token_id and (
            principal.role == Role.admin or record.user == principal.user
        ):
            await db.delete(entry.key, revision=entry.revision)
            return
    raise NotFound(f"no token {token_id}")


@router.get("/users", response_model=list[UserView])
async def list_users(request: Request, _: Principal = Depends(auth.admin)) -> list[UserView]:
    return [
        UserView(name=e.value.name, role=e.value.role, created_at=e.value.created_at)
        for e in await _db(request).list(User, keys.USERS)
    ]


@router.post("/users", response_model=UserView, status_code=201)
async def create_user(
    body: UserRequest, request: Request, _: Principal = Depends(auth.admin)
) -> UserView:
    _check_password(await auth.login_settings(_db(request)), body.name, body.password)
    user = User(
        name=body.name,
        role=body.role,
        password_hash=auth.hash_password(body.password),
        created_at=time.time(),
    )
    try:
        await _db(request).create(keys.user(body.name), user)
    except StoreConflict as exc:
        raise Conflict(f"user {body.name} already exists") from exc
    return UserView(name=user.name, role=user.role, created_at=user.created_at)


@router.put(
    "/users/{name}/password",
    response_model=PasswordReply,
    responses={403: {"description": "Another user's password, and the caller is no admin"}},
)
async def change_password(
    name: Name,
    body: PasswordChange,
    request: Request,
    principal: Principal = Depends(auth.authenticate),
) -> PasswordReply:
    """Set a user's password: users their own (giving the current one), administrators
    anyone's. Every session of the user ends, the caller's own included (whoever held a
    stolen one is out); API tokens end too unless `keep_api_tokens`."""
    db = _db(request)
    request.state.audit_target = name
    own = name == principal.user
    if not own and principal.role != Role.admin:
        raise Forbidden("only an administrator changes another user's password")
    entry = await db.get(User, keys.user(name))
    if entry is None:
        raise NotFound(f"no user {name}")
    settings = await auth.login_settings(db)
    # Even an administrator gives the current password for their own: a stolen session must
    # not be enough to take the account over.
    if own or body.current_password is not None:
        if body.current_password is None:
            raise Invalid("body.current_password", "give your current password")
        if not auth.verify_password(entry.value.password_hash, body.current_password):
            await _failed(request, settings, name)
            raise Invalid("body.current_password", "is not the current password")
    _check_password(settings, name, body.password)
    changed = entry.value.model_copy(update={"password_hash": auth.hash_password(body.password)})
    await db.put(entry.key, changed, revision=entry.revision)
    revoked = 0
    for token in await db.list(TokenRecord, keys.TOKENS):
        if token.value.user == name and (token.value.kind == "session" or not body.keep_api_tokens):
            await db.delete(token.key)
            revoked += 1
    return PasswordReply(revoked=revoked)


@router.delete("/users/{name}", status_code=204)
async def delete_user(
    name: Name, request: Request, principal: Principal = Depends(auth.admin)
) -> None:
    if name == principal.user:
        raise Conflict("you cannot delete yourself")
    db = _db(request)
    entry = await db.get(User, keys.user(name)) if is_name(name) else None
    if entry is None:
        raise NotFound(f"no user {name}")
    await db.delete(entry.key, revision=entry.revision)
    for token in await db.list(TokenRecord, keys.TOKENS):
        if token.value.user == name:
            await db.delete(token.key)
    for grant in await db.list(Grant, keys.GRANTS):
        if grant.value.user == name:
            await db.delete(grant.key)


_SCOPES: dict[str, tuple[type[Record], Any]] = {
    "group": (VMGroup, keys.group),
    "pool": (Pool, keys.pool),
    "switch": (Switch, keys.switch),
}


@router.get("/grants", response_model=list[Grant])
async def list_grants(
    request: Request, principal: Principal = Depends(auth.authenticate)
) -> list[Grant]:
    """Roles granted on scopes: all of them for an administrator, one's own for the others."""
    grants = [e.value for e in await _db(request).list(Grant, keys.GRANTS)]
    if principal.role != Role.admin:
        grants = [g for g in grants if g.user == principal.user]
    return sorted(grants, key=lambda g: (g.user, g.scope, g.name))


@router.post("/grants", response_model=Grant, status_code=201)
async def create_grant(
    body: GrantRequest, request: Request, _: Principal = Depends(auth.admin)
) -> Grant:
    """Grant a user a role on a VM group, a pool or a switch, on top of their cluster-wide
    role: an operator of group `web` changes and opens the consoles of its VMs only."""
    db = _db(request)
    if await db.get(User, keys.user(body.user)) is None:
        raise Invalid("body.user", f"no user {body.user}")
    model, key = _SCOPES[body.scope]
    if await db.get(model, key(body.name)) is None:
        raise Invalid("body.name", f"no {body.scope} {body.name}")
    existing = [e.value for e in await db.list(Grant, keys.GRANTS)]
    if any((g.user, g.scope, g.name) == (body.user, body.scope, body.name) for g in existing):
        raise Conflict(
            f"{body.user} already has a role on {body.scope} {body.name}: revoke it first"
        )
    grant = Grant(
        id=new_id()[:13],
        user=body.user,
        role=body.role,
        scope=body.scope,
        name=body.name,
        created_at=time.time(),
    )
    await db.create(keys.grant(grant.id), grant)
    request.state.audit_target = f"{body.scope}:{body.name}"
    return grant


@router.delete("/grants/{grant_id}", status_code=204)
async def revoke_grant(
    grant_id: Name, request: Request, _: Principal = Depends(auth.admin)
) -> None:
    db = _db(request)
    entry = await db.get(Grant, keys.grant(grant_id))
    if entry is None:
        raise NotFound(f"no grant {grant_id}")
    request.state.audit_target = f"{entry.value.scope}:{entry.value.name}"
    await db.delete(entry.key, revision=entry.revision)


@router.get("/lockouts", response_model=list[LockoutView])
async def list_lockouts(request: Request, _: Principal = Depends(auth.admin)) -> list[LockoutView]:
    """User names and client addresses with recent failed logins, and their locks."""
    records = [e.value for e in await _db(request).list(LoginFailures, keys.LOGIN_FAILURES)]
    now = time.time()
    return [
        LockoutView(
            id=r.id,
            kind=r.kind,
            subject=r.subject,
            failures=r.count,
            last_at=r.last_at,
            locked_until=r.locked_until if r.locked(now) else None,
        )
        for r in sorted(records, key=lambda r: r.last_at, reverse=True)
    ]


@router.delete("/lockouts/{lockout_id}", status_code=204)
async def lift_lockout(
    lockout_id: Name, request: Request, _: Principal = Depends(auth.admin)
) -> None:
    """Lift a lock (and forget the failures) of a user name or a client address."""
    db = _db(request)
    entry = await db.get(LoginFailures, keys.login_failures(lockout_id))
    if entry is None:
        raise NotFound(f"no lockout {lockout_id}")
    request.state.audit_target = f"{entry.value.kind}:{entry.value.subject}"
    await db.delete(entry.key, revision=entry.revision)
