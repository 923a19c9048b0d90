"""The pure rules of access: what each role may do, login locks, password rules, and the
role a user has on an object from its cluster-wide role and the roles granted on scopes."""

import itertools

import pytest

from heron.models.auth import (
    ROLE_PERMISSIONS,
    Grant,
    LoginFailures,
    Permission,
    Role,
    Scope,
    ScopeKind,
    count_failure,
    effective_role,
    password_problem,
    reachable,
)


def test_viewers_read_but_do_not_see_consoles() -> None:
    assert Role.viewer.permissions == {Permission.read}
    assert not Role.viewer.may(Permission.console)


@pytest.mark.parametrize("role", [Role.operator, Role.admin])
def test_operators_and_admins_have_the_console(role: Role) -> None:
    assert role.may(Permission.console) and role.may(Permission.operate)


def test_only_admins_administer() -> None:
    assert [r for r in Role if r.may(Permission.administer)] == [Role.admin]


def test_a_higher_role_has_every_permission_of_a_lower_one() -> None:
    ordered = sorted(Role, key=lambda r: r.rank)
    for lower, higher in itertools.pairwise(ordered):
        assert ROLE_PERMISSIONS[lower] < ROLE_PERMISSIONS[higher]


# -- login protection ---------------------------------------------------------------------

LIMITS = {"limit": 3, "window": 60.0, "lockout": 300.0}


def fail(previous: LoginFailures | None, now: float) -> LoginFailures:
    return count_failure(previous, id="x", kind="user", subject="ann", now=now, **LIMITS)


def test_failures_lock_at_the_limit_and_for_the_lockout() -> None:
    record = None
    for now in (0.0, 10.0):
        record = fail(record, now)
        assert record.locked_until is None
    record = fail(record, 20.0)
    assert record.count == 3 and record.locked_until == 320.0
    assert record.locked(319.9) and not record.locked(320.0)


def test_failures_older_than_the_window_are_forgotten() -> None:
    record = fail(fail(None, 0.0), 10.0)
    record = fail(record, 61.0)
    assert record.count == 1 and record.first_at == 61.0 and record.locked_until is None


def test_a_lock_that_ended_starts_a_fresh_count() -> None:
    locked = fail(fail(fail(None, 0.0), 1.0), 2.0)
    after = fail(locked, 400.0)
    assert after.count == 1 and after.locked_until is None and not after.locked(400.0)


def test_a_failure_during_a_lock_does_not_extend_it() -> None:
    locked = fail(fail(fail(None, 0.0), 1.0), 2.0)
    again = fail(locked, 100.0)
    assert again.locked_until == locked.locked_until and again.count == 4


@pytest.mark.parametrize(
    ("password", "problem"),
    [
        ("short", "at least 8"),
        ("Annabelle", "user name"),
        ("annabelle", "user name"),
        ("correct horse", None),
    ],
)
def test_password_rules(password: str, problem: str | None) -> None:
    found = password_problem("annabelle", password, min_length=8, refuse_user_name=True)
    assert (found is None) if problem is None else (found is not None and problem in found)


def test_the_user_name_rule_can_be_turned_off() -> None:
    assert password_problem("annabelle", "annabelle", min_length=8, refuse_user_name=False) is None


# -- roles granted on scopes --------------------------------------------------------------


def grant(user: str, role: Role, scope: ScopeKind, name: str) -> Grant:
    return Grant(id=f"{user}-{name}", user=user, role=role, scope=scope, name=name, created_at=0)


GRANTS = [
    grant("ann", Role.operator, "group", "web"),
    grant("ann", Role.viewer, "group", "db"),
    grant("bob", Role.admin, "group", "db"),
    grant("ann", Role.admin, "pool", "web"),  # a pool named like the group: another scope
]


@pytest.mark.parametrize(
    ("cluster", "scopes", "limit", "expected"),
    [
        (Role.viewer, [("group", "web")], None, Role.operator),  # the grant raises it
        (Role.viewer, [("group", "db")], None, Role.viewer),
        (Role.viewer, [("group", "other")], None, Role.viewer),  # out of grants: cluster
        (Role.viewer, [], None, Role.viewer),  # a VM in no group
        (None, [("group", "other")], None, None),  # out of sight altogether
        (None, [("group", "db")], None, Role.viewer),  # bob's admin grant is not ann's
        (None, [("group", "web")], Role.viewer, Role.viewer),  # a token capped at viewer
        (Role.admin, [("group", "db")], None, Role.admin),  # a grant never lowers
        (Role.admin, [], Role.operator, Role.operator),
        (None, [("group", "web"), ("pool", "web")], None, Role.admin),
        (None, [("pool", "db")], None, None),
    ],
)
def test_the_effective_role_on_an_object(
    cluster: Role | None, scopes: list[Scope], limit: Role | None, expected: Role | None
) -> None:
    assert effective_role(cluster, GRANTS, "ann", scopes, limit) is expected


def test_reachable_scopes_for_lists() -> None:
    assert reachable(Role.viewer, GRANTS, "ann", "group", Role.viewer) is None  # all of them
    assert reachable(None, GRANTS, "ann", "group", Role.viewer) == {"web", "db"}
    assert reachable(None, GRANTS, "ann", "group", Role.operator) == {"web"}
    assert reachable(Role.viewer, GRANTS, "ann", "group", Role.operator) == {"web"}
    assert reachable(None, GRANTS, "ann", "group", Role.operator, limit=Role.viewer) == set()
    assert reachable(None, GRANTS, "carl", "group", Role.viewer) == set()
    assert reachable(None, GRANTS, "ann", "switch", Role.viewer) == set()


def test_a_group_operator_has_the_console_there_only() -> None:
    on_web = effective_role(Role.viewer, GRANTS, "ann", [("group", "web")])
    on_db = effective_role(Role.viewer, GRANTS, "ann", [("group", "db")])
    assert on_web is not None and on_web.may(Permission.console)
    assert on_db is not None and not on_db.may(Permission.console)
