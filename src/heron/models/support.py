"""Diagnostic bundles for the support team: what one holds and how it is listed."""

from pydantic import BaseModel, Field

# heron-support-<node>-<UTC time>.tar.gz: the name says where it is kept and when it was made.
BUNDLE_PATTERN = r"^heron-support-[a-z0-9._-]{1,63}-[0-9]{8}T[0-9]{6}Z(-[0-9]+)?\.tar\.gz$"


class BundleInfo(BaseModel):
    name: str = Field(description="the file's name, heron-support-<node>-<time>.tar.gz")
    node: str = Field(description="the node that keeps it")
    size: int = Field(description="bytes")
    created_at: float
    created_by: str = Field(description="the user who asked for it (monica: a critical alert)")
    task: str | None = Field(default=None, description="the task that built it")
    missing: list[str] = Field(
        default_factory=list, description="nodes that did not answer in time (not in it)"
    )


class BundleRequest(BaseModel):
    model_config = {"extra": "forbid"}
    send: bool = Field(default=False, description="mail it to the support address once built")


class BundleSent(BaseModel):
    name: str
    to: str = Field(description="the support address it went to")
    channel: str = Field(description="the SMTP channel it went through")
