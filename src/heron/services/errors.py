"""The errors of the service layer: what the caller asked cannot be done, and why."""

from heron.errors import HeronError


class ServiceError(HeronError):
    """Root of the service layer's errors; `fields` name the offending inputs."""

    def __init__(self, message: str, fields: list[dict[str, str]] | None = None):
        super().__init__(message)
        self.message = message
        self.fields = fields or []


class Invalid(ServiceError):
    """An input is wrong: `field` names it (as "body.memory_mib"), `reason` says why."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}", [{"field": field, "reason": reason}])


class NotFound(ServiceError):
    """The object the request names does not exist."""


class Conflict(ServiceError):
    """The request is valid but the cluster's current state does not allow it."""
