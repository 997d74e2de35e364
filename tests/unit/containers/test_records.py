"""Container records, exit reasons, stop signals and the ExecSync output cap."""

from __future__ import annotations

import signal

from crirt.containers.records import ContainerRecord, exit_reason, name_key
from crirt.containers.service import cap_output, stop_signal
from crirt.model.common import ImageSpec
from crirt.model.container import ContainerConfig, ContainerMetadata
from crirt.model.enums import ContainerState, Signal


def record(stop: str = "", config_signal: Signal = Signal.RUNTIME_DEFAULT) -> ContainerRecord:
    config = ContainerConfig(metadata=ContainerMetadata(name="web", attempt=2), image=ImageSpec(image="busybox"),
                             labels={"a": "b"}, stop_signal=config_signal)
    return ContainerRecord(id="c1", sandbox_id="s1", config=config, image_ref="busybox", image_id="sha256:ab",
                           repo_digest="docker.io/library/busybox@sha256:cd", stop_signal=stop, bundle="/b",
                           created_at=5, uid=1, gid=2, additional_gids=[2, 3])


def test_name_key_is_sandbox_name_attempt() -> None:
    assert name_key("s1", record().config) == "s1/web/2" == record().name_key


def test_exit_reasons() -> None:
    assert exit_reason(0, False) == "Completed"
    assert exit_reason(3, False) == "Error"
    assert exit_reason(137, True) == "OOMKilled"


def test_stop_signal_request_then_image_then_sigterm() -> None:
    assert stop_signal(record()) == signal.SIGTERM
    assert stop_signal(record("SIGQUIT")) == signal.SIGQUIT
    assert stop_signal(record("int")) == signal.SIGINT
    assert stop_signal(record("9")) == 9
    assert stop_signal(record("SIGNOPE")) == signal.SIGTERM
    assert stop_signal(record("SIGQUIT", Signal.SIGHUP)) == signal.SIGHUP


def test_output_cap_counts_both_streams() -> None:
    assert cap_output(b"aaaa", b"bbbb", limit=6) == (b"aaaa", b"bb")
    assert cap_output(b"aaaaaaaa", b"bb", limit=6) == (b"aaaaaa", b"")
    assert cap_output(b"a", b"b", limit=6) == (b"a", b"b")


def test_listing_and_status_mirror_the_record() -> None:
    rec = record().model_copy(update={"state": ContainerState.CONTAINER_EXITED, "exit_code": 3, "reason": "Error"})
    listing = rec.listing()
    assert (listing.id, listing.pod_sandbox_id, listing.image_ref, listing.image_id, listing.labels) == \
        ("c1", "s1", "docker.io/library/busybox@sha256:cd", "sha256:ab", {"a": "b"})
    status = rec.status()
    assert (status.state, status.exit_code, status.reason, status.created_at) == \
        (ContainerState.CONTAINER_EXITED, 3, "Error", 5)
    assert status.user is not None and status.user.linux is not None
    assert list(status.user.linux.supplemental_groups) == [2, 3]
