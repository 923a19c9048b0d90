"""The pure rules of access: what each role may do, login locks, password rules."""

import itertools

import pytest

from heron.models.auth import (
    ROLE_PERMISSIONS,
    LoginFailures,
    Permission,
    Role,
    count_failure,
    password_problem,
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
