"""Commands of the CRI image service: list, inspect, pull and remove images, and image filesystem usage."""

from __future__ import annotations

from pydantic import Field

from crirt.commands.base import Command, Result
from crirt.model.common import ImageSpec
from crirt.model.image import AuthConfig, Image, ImageFilter
from crirt.model.sandbox import PodSandboxConfig
from crirt.model.stats import FilesystemUsage
from crirt.model.types import BoundedList, RequiredId, StrMap, Text


class RequiredImageSpec(ImageSpec):
    """An image spec whose image reference must be given."""

    image: RequiredId


class ListImagesResult(Result):
    """The images that matched."""

    images: BoundedList[Image] = Field(default_factory=list)


class ListImagesCommand(Command):
    """List the images on the node matching an optional filter."""

    rpc = "ListImages"
    result = ListImagesResult

    filter: ImageFilter | None = None


class StreamImagesResult(Result):
    """One batch of matching images."""

    images: BoundedList[Image] = Field(default_factory=list)


class StreamImagesCommand(Command):
    """List the images on the node matching an optional filter, in several batches."""

    rpc = "StreamImages"
    result = StreamImagesResult
    streaming = True

    filter: ImageFilter | None = None


class ImageStatusResult(Result):
    """The image, or none when it is not present, with free-form details when verbose."""

    image: Image | None = None
    info: StrMap = Field(default_factory=dict)


class ImageStatusCommand(Command):
    """Ask whether an image is present and what it looks like."""

    rpc = "ImageStatus"
    result = ImageStatusResult

    image: RequiredImageSpec
    verbose: bool = False


class PullImageResult(Result):
    """Reference of the pulled image, as later reported in image_ref/image_id fields."""

    image_ref: Text = ""


class PullImageCommand(Command):
    """Pull an image, with optional registry credentials."""

    rpc = "PullImage"
    result = PullImageResult

    image: RequiredImageSpec
    auth: AuthConfig | None = None
    sandbox_config: PodSandboxConfig | None = None

    def lock_keys(self) -> tuple[str, ...]:
        """Serialize with other pulls and removals of the same reference."""
        return (f"image:{self.image.image}",)


class RemoveImageResult(Result):
    """Acknowledges that the image is gone; removing an absent image is fine."""


class RemoveImageCommand(Command):
    """Remove an image from the node."""

    rpc = "RemoveImage"
    result = RemoveImageResult

    image: RequiredImageSpec

    def lock_keys(self) -> tuple[str, ...]:
        """Serialize with pulls and removals of the same reference."""
        return (f"image:{self.image.image}",)


class ImageFsInfoResult(Result):
    """Usage of the filesystems holding images and container layers."""

    image_filesystems: BoundedList[FilesystemUsage] = Field(default_factory=list)
    container_filesystems: BoundedList[FilesystemUsage] = Field(default_factory=list)


class ImageFsInfoCommand(Command):
    """Ask how much space images and container layers use."""

    rpc = "ImageFsInfo"
    result = ImageFsInfoResult
