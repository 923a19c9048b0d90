"""Options that many commands share, declared once so they read the same everywhere."""

from typing import Annotated

import typer

Json = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]
Wait = Annotated[bool, typer.Option("--wait/--no-wait", help="follow the task to its end")]
