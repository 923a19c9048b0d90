"""The pure rules of access: what each role may do."""

import itertools

import pytest

from heron.models.auth import ROLE_PERMISSIONS, Permission, Role


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
