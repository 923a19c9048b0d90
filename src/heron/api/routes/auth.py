"""Login, API tokens, users, passwords and login locks."""

import time
from typing import Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from heron.api import auth
from heron.api.auth import Principal
from heron.api.errors import Conflict, Forbidden, Invalid, Locked, NotFound, Unauthorized
from heron.configdb import ConfigDB, keys
from heron.configdb import Conflict as StoreConflict
from heron.models.auth import LoginFailures, Role, TokenRecord, User, password_problem
from heron.models.common import Name, is_name
from heron.models.settings import LoginSettings

router = APIRouter(tags=["auth"])


class Login(BaseModel):
    username: str = Field(min_length=1, max_length=63)
    password: str = Field(min_length=1, max_length=1024)


class TokenReply(BaseModel):
    token: str
    id: str
    user: str
    role: Role
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
    role: Role
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


class UserView(BaseModel):
    name: str
    role: Role
    created_at: float


class LockoutView(BaseModel):
    id: str
    kind: Literal["user", "address"]
    subject: str
    failures: int
    last_at: float
    locked_until: float | None = Field(description="null: counting, not locked (yet)")


def _db(request: Request) -> ConfigDB:
    return request.app.state.ctx.db


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
async def whoami(principal: Principal = Depends(auth.viewer)) -> dict[str, str]:
    return {"user": principal.user, "role": principal.role.value, "token": principal.token_id}


@router.get("/tokens", response_model=list[TokenRecord])
async def list_tokens(
    request: Request, principal: Principal = Depends(auth.viewer)
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
    body: TokenRequest, request: Request, principal: Principal = Depends(auth.viewer)
) -> TokenReply:
    """An API token for automation: carries the caller's role or a lower one, and expires
    after `expires_in_days` if given (never otherwise)."""
    db = _db(request)
    user = await db.get(User, keys.user(principal.user))
    if user is None:
        raise NotFound(f"user {principal.user} no longer exists")
    # The caller's token may itself carry less than the user's role: never more than it.
    if body.role is not None and not principal.role.allows(body.role):
        raise Invalid("body.role", f"above your own role ({principal.role.value})")
    role = body.role or principal.role
    ttl = body.expires_in_days * 86400 if body.expires_in_days else None
    token, record = await auth.issue_token(db, user.value, "api", body.description, ttl, role)
    return TokenReply(
        token=token, id=record.id, user=record.user, role=record.role, expires_at=record.expires_at
    )


@router.delete("/tokens/{token_id}", status_code=204)
async def revoke_token(
    token_id: Name, request: Request, principal: Principal = Depends(auth.viewer)
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
    name: Name, body: PasswordChange, request: Request, principal: Principal = Depends(auth.viewer)
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
