"""Image listing, status and pull credential messages."""

from __future__ import annotations

from pydantic import Field

from crirt.model.base import Model
from crirt.model.common import ImageSpec, Int64Value
from crirt.model.types import BoundedList, Text, UInt64


class AuthConfig(Model):
    """Credentials for pulling from a registry; the secrets are kept out of ``repr`` (and so out of logs)."""

    username: Text = ""
    password: Text = Field(default="", repr=False)
    auth: Text = Field(default="", repr=False)
    server_address: Text = ""
    identity_token: Text = Field(default="", repr=False)
    registry_token: Text = Field(default="", repr=False)


class ImageFilter(Model):
    """Criteria for listing images."""

    image: ImageSpec | None = None


class Image(Model):
    """An image stored on the node."""

    id: Text = ""
    repo_tags: BoundedList[Text] = Field(default_factory=list)
    repo_digests: BoundedList[Text] = Field(default_factory=list)
    size: UInt64 = 0
    uid: Int64Value | None = None
    username: Text = ""
    spec: ImageSpec | None = None
    pinned: bool = False
