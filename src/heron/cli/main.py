"""heron: manage a Heron cluster from the command line (the API, with tables and progress)."""

import sys
from typing import NoReturn

import typer

from heron import devcluster as dev
from heron.cli import (
    alert,
    cluster,
    devcluster,
    dr,
    event,
    group,
    guest,
    imports,
    metrics,
    network,
    node,
    pool,
    secgroup,
    session,
    support,
    switch,
    task,
    token,
    user,
    vm,
    volume,
)
from heron.cli.client import CliError

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
app.command()(session.login)
# Each resource's module is named after its command, in the order `heron --help` lists them.
for module in (
    vm,
    node,
    pool,
    volume,
    switch,
    network,
    secgroup,
    task,
    event,
    metrics,
    alert,
    support,
    token,
    user,
    devcluster,
    group,
    cluster,
    dr,
):
    app.add_typer(module.app, name=module.__name__.rsplit(".", 1)[-1])
vm.app.add_typer(guest.app, name="hook")
app.add_typer(imports.app, name="import")  # `import` is Python's own word: not a module name


def _fail(message: str, code: int, command: str = "heron") -> NoReturn:
    # One line whatever the message holds (a server's text, a multi-line hint): scripts read
    # the first line of stderr, and a traceback or a paragraph there is noise.
    sys.stderr.write(f"{command}: {' '.join(message.split())}\n")
    sys.exit(code)


def _usage_error(exc: typer.TyperException) -> NoReturn:
    """A usage error (bad option value, missing argument, unknown command) as one line."""
    message = exc.format_message()
    context = getattr(exc, "ctx", None)
    if not message:  # no arguments: the help was printed already
        sys.exit(exc.exit_code)
    if context is None:
        _fail(message, exc.exit_code)
    command = context.command_path
    hint = f"try '{command} {context.help_option_names[0]}'"
    _fail(f"{message} ({hint})", exc.exit_code, command)


def main(args: list[str] | None = None) -> None:
    """The `heron` command; `args` defaults to the process's arguments."""
    try:
        code = app(args, prog_name="heron", standalone_mode=False)
    except CliError as exc:
        _fail(str(exc), exc.code)
    except dev.DevClusterError as exc:
        _fail(str(exc).splitlines()[0], 1)
    except typer.Abort:
        sys.exit(130)
    except typer.TyperException as exc:  # typer's usage errors; they carry exit code 2
        _usage_error(exc)
    # Without standalone mode typer returns the code of an exit (e.g. 130 after Ctrl-C).
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()
