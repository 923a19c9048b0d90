"""Login, API tokens and users."""

import time

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from heron.api import auth
from heron.api.auth import Principal
from heron.api.errors import Conflict, NotFound, Unauthorized
from heron.configdb import ConfigDB, keys
from heron.configdb import Conflict as StoreConflict
from heron.models.auth import Role, TokenRecord, User
from heron.models.cluster import ClusterAuthority
from heron.models.common import Name, is_name
from heron.tls import fingerprint

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


class UserRequest(BaseModel):
    name: Name
    role: Role
    password: str = Field(min_length=8, max_length=1024)


class AuthorityView(BaseModel):
    certificate: str = Field(description="the cluster CA's certificate, PEM")
    fingerprint: str = Field(description="SHA-256 of its DER, as `openssl x509 -fingerprint "
                             "-sha256` prints it")  # fmt: skip


class UserView(BaseModel):
    name: str
    role: Role
    created_at: float


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


@router.post("/auth/login", response_model=TokenReply)
async def login(body: Login, request: Request) -> TokenReply:
    request.state.login_user = body.username
    db = _db(request)
    entry = await db.get(User, keys.user(body.username)) if is_name(body.username) else None
    if entry is None or not auth.verify_password(entry.value.password_hash, body.password):
        raise Unauthorized("wrong user name or password")
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
    """An API token for automation: carries the caller's role and does not expire."""
    db = _db(request)
    user = await db.get(User, keys.user(principal.user))
    if user is None:
        raise NotFound(f"user {principal.user} no longer exists")
    token, record = await auth.issue_token(db, user.value, "api", body.description)
    return TokenReply(
        token=token, id=record.id, user=record.user, role=record.role, expires_at=None
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
