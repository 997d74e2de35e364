"""Structured logs: the text and JSON formatters, the per-call context and the ids taken from commands."""

from __future__ import annotations

import asyncio
import contextvars
import io
import json
import logging
import re
import sys
from datetime import datetime

from crirt import logs
from crirt.commands.containers import ContainerStatusCommand, CreateContainerCommand
from crirt.commands.images import PullImageCommand
from crirt.commands.runtime import VersionCommand
from crirt.commands.sandboxes import StopPodSandboxCommand

POD = "a" * 64
CONTAINER = "c" * 64


def record(message: str = "hello %s", *args: object, exc: bool = False) -> logging.LogRecord:
    """A record made as a logger makes it, passed through the context filter."""
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    rec = logging.getLogger("crirt.test").makeRecord("crirt.test", logging.WARNING, __file__, 1, message,
                                                     args or ("world",), exc_info)
    assert logs.ContextFilter().filter(rec)
    return rec


def test_json_line_has_time_level_logger_message_and_no_context_outside_a_call() -> None:
    entry = json.loads(logs.JsonFormatter().format(record()))
    assert entry.keys() == {"time", "level", "logger", "message"}
    assert (entry["level"], entry["logger"], entry["message"]) == ("warning", "crirt.test", "hello world")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"]), entry["time"]
    assert datetime.fromisoformat(entry["time"]).utcoffset().total_seconds() == 0  # type: ignore[union-attr]


def test_json_line_carries_the_request_id_rpc_and_ids_of_the_call() -> None:
    def inside() -> tuple[str, str]:
        request_id = logs.start_request("CreateContainer")
        logs.bind(pod=POD, container=CONTAINER, image="busybox:1")
        return request_id, logs.JsonFormatter().format(record())

    request_id, line = contextvars.copy_context().run(inside)
    entry = json.loads(line)
    assert re.fullmatch(r"[0-9a-f]{8}", request_id)
    assert {k: entry[k] for k in logs.CONTEXT_KEYS} == {
        "request_id": request_id, "rpc": "CreateContainer", "pod": POD, "container": CONTAINER, "image": "busybox:1"}
    assert logs.context() == {}  # the call's context stayed in its copy


def test_json_line_holds_the_traceback_and_escapes_newlines() -> None:
    line = logs.JsonFormatter().format(record("two\n%s", "lines", exc=True))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "two\nlines"
    assert "ValueError: boom" in entry["error"] and "Traceback" in entry["error"]


def test_text_line_shows_request_id_rpc_and_short_ids_only_inside_a_call() -> None:
    plain = logs.TextFormatter().format(record())
    assert re.fullmatch(r"\S+ \S+ WARNING crirt\.test: hello world", plain), plain

    def inside() -> tuple[str, str]:
        request_id = logs.start_request("PullImage")
        logs.bind(pod=POD, image="docker.io/library/busybox:1", container="")
        return request_id, logs.TextFormatter().format(record())

    request_id, line = contextvars.copy_context().run(inside)
    assert line.endswith(f" WARNING crirt.test [req={request_id} PullImage pod={POD[:12]} "
                         "image=docker.io/library/busybox:1]: hello world"), line


def test_requests_get_distinct_ids_and_tasks_inherit_the_context() -> None:
    async def read_context() -> dict[str, str]:
        await asyncio.sleep(0)
        return dict(logs.context())

    async def one_call(rpc: str) -> tuple[str, str, str]:
        request_id = logs.start_request(rpc)
        logs.bind(pod=rpc)
        spawned = asyncio.ensure_future(read_context())  # a task started by the call
        await asyncio.sleep(0)  # let the other call run in between
        inherited = await spawned
        return request_id, logs.context()["pod"], inherited["request_id"]

    async def main() -> list[tuple[str, str, str]]:
        return await asyncio.gather(one_call("A"), one_call("B"))

    (id_a, pod_a, task_a), (id_b, pod_b, task_b) = asyncio.run(main())
    assert id_a != id_b and (pod_a, pod_b) == ("A", "B") and (task_a, task_b) == (id_a, id_b)


def test_ids_come_from_the_cri_fields_of_commands() -> None:
    assert logs.ids_of(VersionCommand()) == {}
    assert logs.ids_of(StopPodSandboxCommand(pod_sandbox_id=POD)) == {"pod": POD}
    assert logs.ids_of(ContainerStatusCommand(container_id=CONTAINER)) == {"container": CONTAINER}
    assert logs.ids_of(PullImageCommand.model_validate({"image": {"image": "busybox:1"}})) == {"image": "busybox:1"}
    create = CreateContainerCommand.model_validate({
        "pod_sandbox_id": POD, "config": {"metadata": {"name": "c"}, "image": {"image": "busybox:1"}}})
    assert logs.ids_of(create) == {"pod": POD, "image": "busybox:1"}


def test_configure_installs_one_handler_and_switches_format_and_level() -> None:
    root = logging.getLogger()
    before = (root.level, list(root.handlers))
    stream = io.StringIO()
    try:
        logs.configure("info", "text")
        logs.configure("debug", "json")  # a reload: the same handler, a new formatter and level
        ours = [h for h in root.handlers if h not in before[1]]
        assert len(ours) == 1 and isinstance(ours[0], logging.StreamHandler)
        ours[0].setStream(stream)
        assert root.level == logging.DEBUG and logging.getLogger("h2").level == logging.INFO
        logging.getLogger("crirt.test").debug("in json")
        assert json.loads(stream.getvalue())["message"] == "in json"
        logs.configure("warning", "text")
        logging.getLogger("crirt.test").info("hidden")
        logging.getLogger("crirt.test").warning("shown")
        assert stream.getvalue().splitlines()[1:] == [stream.getvalue().splitlines()[-1]]
        assert stream.getvalue().rstrip().endswith("WARNING crirt.test: shown")
    finally:
        for handler in root.handlers[:]:
            if handler not in before[1]:
                root.removeHandler(handler)
        root.setLevel(before[0])
