"""Shared pieces of the records: names, ids and time."""

import re
import time
import uuid
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema

# Anchored, and written in the common subset of Python's and ECMAScript's regex syntax, so the
# OpenAPI schema states exactly what the validator accepts (generated clients check it too).
NAME_PATTERN = r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$"
_NAME = re.compile(NAME_PATTERN)
NAME_REASON = (
    "must be 1-63 characters of a-z, 0-9, '.', '_' or '-', "
    "starting and ending with a letter or digit"
)


def matching(pattern: str, reason: str) -> Callable[[str], str]:
    """A validator that refuses what `pattern` does not match in full, saying `reason`."""
    regex = re.compile(pattern)

    def check(value: str) -> str:
        if not regex.fullmatch(value):
            raise ValueError(reason)
        return value

    return check


def string_schema(
    pattern: str, min_length: int | None = None, max_length: int | None = None
) -> WithJsonSchema:
    """The JSON schema of a string checked by `matching(pattern, ...)`: the validator keeps its
    readable reason, the schema carries the same pattern for clients."""
    schema: dict[str, Any] = {"type": "string", "pattern": pattern}
    if min_length is not None:
        schema["minLength"] = min_length
    if max_length is not None:
        schema["maxLength"] = max_length
    return WithJsonSchema(schema)


# A name an administrator types: also safe as a path component and an etcd key segment.
# Ids (UUIDs, token ids) fit it too, so a path segment that takes "an id or a name" is a Name.
Name = Annotated[
    str, AfterValidator(matching(NAME_PATTERN, NAME_REASON)), string_schema(NAME_PATTERN, 1, 63)
]


# A mail address as mail headers carry it: plain ASCII, no display name, nothing that could
# end a header line. One pattern for Python and the schema's clients.
MailAddress = Annotated[
    str, Field(pattern=r"^[A-Za-z0-9._%+=-]+@[A-Za-z0-9.-]+$", min_length=3, max_length=254)
]


def new_id() -> str:
    return str(uuid.uuid4())


def now() -> float:
    return time.time()


class Record(BaseModel):
    """A record stored in the ConfigDB. Unknown fields are refused, so typos fail loudly."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def is_name(value: str) -> bool:
    return bool(_NAME.fullmatch(value))
