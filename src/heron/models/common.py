"""Shared pieces of the records: names, ids and time."""

import re
import time
import uuid
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

_NAME = re.compile(r"[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?")


def _check_name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError(
            "must be 1-63 characters of a-z, 0-9, '.', '_' or '-', "
            "starting and ending with a letter or digit"
        )
    return value


# A name an administrator types: also safe as a path component and an etcd key segment.
Name = Annotated[str, AfterValidator(_check_name)]


def new_id() -> str:
    return str(uuid.uuid4())


def now() -> float:
    return time.time()


class Record(BaseModel):
    """A record stored in the ConfigDB. Unknown fields are refused, so typos fail loudly."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def is_name(value: str) -> bool:
    return bool(_NAME.fullmatch(value))
