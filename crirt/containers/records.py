"""What crirt remembers about each container.

Two tables in the store: ``container_records`` (``ContainerRecord``, the source of truth, written first) and
``containers`` (the CRI ``Container`` listing that the hot ListContainers path serves, derived from the record
and replaced only when it changes, so unchanged containers keep their identity and their cached encoding).
"""

from __future__ import annotations

from pydantic import Field

from crirt.model.base import Model
from crirt.model.common import ImageSpec
from crirt.model.container import (
    Container,
    ContainerConfig,
    ContainerResources,
    ContainerStatus,
    ContainerUser,
    LinuxContainerUser,
)
from crirt.model.enums import ContainerState

RECORDS = "container_records"

REASON_COMPLETED = "Completed"
REASON_ERROR = "Error"
REASON_OOM = "OOMKilled"


def name_key(sandbox_id: str, config: ContainerConfig) -> str:
    """The reservation key of a container name: (sandbox, name, attempt), as the kubelet sees it."""
    meta = config.metadata
    assert meta is not None
    return f"{sandbox_id}/{meta.name}/{meta.attempt}"


def exit_reason(exit_code: int, oom_killed: bool) -> str:
    """The CRI ``reason`` of an exited container (containerd's words)."""
    if oom_killed:
        return REASON_OOM
    return REASON_COMPLETED if exit_code == 0 else REASON_ERROR


class ContainerRecord(Model):
    """One container as crirt keeps it; immutable, replaced as a whole on each change."""

    id: str
    sandbox_id: str
    config: ContainerConfig
    runtime_handler: str = ""
    image_ref: str
    """What the request named (``config.image.image``), e.g. ``busybox:1``."""
    image_id: str
    """The image's config digest."""
    repo_digest: str = ""
    """The image's ``name@digest``, the CRI's ``image_ref``; the id when the image has none."""
    stop_signal: str = ""
    """The image's ``StopSignal`` (``SIGTERM``, ``15``...), "" when it names none."""
    bundle: str
    log_path: str = ""
    state: ContainerState = ContainerState.CONTAINER_CREATED
    pid: int = 0
    """Host pid of the container's init process as the runtime reported it at create/start (0: unknown); stats
    and status read the kernel's files through it instead of asking the runtime."""
    created_at: int
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    uid: int = 0
    gid: int = 0
    additional_gids: list[int] = Field(default_factory=list)

    @property
    def name_key(self) -> str:
        return name_key(self.sandbox_id, self.config)

    def image_spec(self) -> ImageSpec:
        image = self.config.image
        return ImageSpec(image=self.image_ref, annotations=image.annotations if image else {},
                         user_specified_image=image.user_specified_image if image else "",
                         runtime_handler=image.runtime_handler if image else "")

    def listing(self) -> Container:
        """The container as ListContainers shows it."""
        return Container(id=self.id, pod_sandbox_id=self.sandbox_id, metadata=self.config.metadata,
                         image=self.image_spec(), image_ref=self.repo_digest, state=self.state,
                         created_at=self.created_at, labels=self.config.labels,
                         annotations=self.config.annotations, image_id=self.image_id)

    def status(self) -> ContainerStatus:
        """The container as ContainerStatus shows it."""
        linux = self.config.linux
        return ContainerStatus(
            id=self.id, metadata=self.config.metadata, state=self.state, created_at=self.created_at,
            started_at=self.started_at, finished_at=self.finished_at, exit_code=self.exit_code,
            image=self.image_spec(), image_ref=self.repo_digest, reason=self.reason, message=self.message,
            labels=self.config.labels, annotations=self.config.annotations, mounts=self.config.mounts,
            log_path=self.log_path,
            resources=ContainerResources(linux=linux.resources) if linux and linux.resources else None,
            image_id=self.image_id, stop_signal=self.config.stop_signal,
            user=ContainerUser(linux=LinuxContainerUser(uid=self.uid, gid=self.gid,
                                                        supplemental_groups=self.additional_gids)))
