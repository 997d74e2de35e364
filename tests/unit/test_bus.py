"""The bus: one handler per command type, keyed serialization, concurrency, middleware and subscribers."""

from __future__ import annotations

import asyncio

import pytest

from crirt.bus import Bus, BusError, SubscriberDropped
from crirt.commands.containers import ContainerStatusCommand, StartContainerCommand
from crirt.commands.runtime import VersionCommand, VersionResult
from crirt.commands.sandboxes import StopPodSandboxCommand, UpdatePodSandboxResourcesCommand
from crirt.model.base import Model


class Tick(Model):
    n: int


def run(coro):
    return asyncio.run(coro)


def test_each_command_type_has_exactly_one_handler() -> None:
    bus = Bus()

    async def version(cmd: VersionCommand) -> VersionResult:
        return VersionResult(version=cmd.version)

    bus.register(VersionCommand, version)
    with pytest.raises(BusError, match="already has a handler"):
        bus.register(VersionCommand, version)
    assert run(bus.dispatch(VersionCommand(version="v9"))).version == "v9"
    with pytest.raises(BusError, match="no handler registered for StartContainerCommand"):
        run(bus.dispatch(StartContainerCommand(container_id="c1")))


def test_commands_on_the_same_object_never_interleave_others_run_concurrently() -> None:
    log: list[str] = []

    async def scenario() -> None:
        bus = Bus()

        async def start(cmd: StartContainerCommand) -> None:
            log.append(f"begin {cmd.container_id}")
            await asyncio.sleep(0.05)
            log.append(f"end {cmd.container_id}")

        bus.register(StartContainerCommand, start)
        await asyncio.gather(
            bus.dispatch(StartContainerCommand(container_id="a")),
            bus.dispatch(StartContainerCommand(container_id="a")),
            bus.dispatch(StartContainerCommand(container_id="b")),
        )
        assert len(bus._locks) == 0  # locks are forgotten once idle

    run(scenario())
    first_a = log.index("begin a")
    assert log[first_a + 1] in ("begin b", "end a")
    # the two "a" commands are strictly sequential; "b" overlaps the first "a"
    a_events = [e for e in log if e.endswith(" a")]
    assert a_events == ["begin a", "end a", "begin a", "end a"]
    assert log.index("begin b") < log.index("end a")


def test_a_prefix_and_the_full_id_share_one_lock_which_background_work_takes_too() -> None:
    log: list[str] = []

    async def scenario() -> None:
        bus = Bus()
        bus.resolve_ids("container", lambda wanted: "abcdef" if "abcdef".startswith(wanted) else wanted)

        async def start(cmd: StartContainerCommand) -> None:
            log.append(f"begin {cmd.container_id}")
            await asyncio.sleep(0.05)
            log.append(f"end {cmd.container_id}")

        async def background() -> None:
            await asyncio.sleep(0.01)
            async with bus.hold("container:abcdef"):
                log.append("background")

        bus.register(StartContainerCommand, start)
        await asyncio.gather(bus.dispatch(StartContainerCommand(container_id="abc")),
                             background(), bus.dispatch(StartContainerCommand(container_id="abcdef")))

    run(scenario())
    assert log == ["begin abc", "end abc", "begin abcdef", "end abcdef", "background"]  # one queue, in order


def test_a_run_to_completion_command_finishes_and_keeps_its_lock_when_its_caller_goes() -> None:
    log: list[str] = []

    async def scenario() -> None:
        bus = Bus()

        async def stop(cmd: StopPodSandboxCommand) -> None:
            log.append("teardown begins")
            await asyncio.sleep(0.1)
            log.append("teardown ends")

        async def update(cmd: UpdatePodSandboxResourcesCommand) -> None:
            log.append("update")

        bus.register(StopPodSandboxCommand, stop)
        bus.register(UpdatePodSandboxResourcesCommand, update)
        caller = asyncio.ensure_future(bus.dispatch(StopPodSandboxCommand(pod_sandbox_id="p")))
        await asyncio.sleep(0.02)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        await bus.dispatch(UpdatePodSandboxResourcesCommand(pod_sandbox_id="p"))  # waits for the teardown
        await bus.finish(1)

    run(scenario())
    assert log == ["teardown begins", "teardown ends", "update"]


def test_status_queries_are_not_blocked_by_a_slow_command_on_the_same_container() -> None:
    async def scenario() -> float:
        bus = Bus()

        async def start(cmd: StartContainerCommand) -> None:
            await asyncio.sleep(1)

        async def status(cmd: ContainerStatusCommand) -> str:
            return "fast"

        bus.register(StartContainerCommand, start)
        bus.register(ContainerStatusCommand, status)
        slow = asyncio.create_task(bus.dispatch(StartContainerCommand(container_id="a")))
        await asyncio.sleep(0.01)
        loop = asyncio.get_running_loop()
        began = loop.time()
        assert await bus.dispatch(ContainerStatusCommand(container_id="a")) == "fast"
        took = loop.time() - began
        slow.cancel()
        return took

    assert run(scenario()) < 0.5


def test_middleware_wraps_dispatch_in_order_and_sees_errors() -> None:
    calls: list[str] = []

    def named(name: str):
        async def middleware(cmd, call_next):
            calls.append(name)
            try:
                return await call_next(cmd)
            except RuntimeError:
                calls.append(f"{name} saw the error")
                raise

        return middleware

    async def scenario() -> None:
        bus = Bus(middleware=[named("outer"), named("inner")])

        async def version(cmd: VersionCommand) -> VersionResult:
            calls.append("handler")
            if cmd.version == "boom":
                raise RuntimeError("boom")
            return VersionResult()

        bus.register(VersionCommand, version)
        await bus.dispatch(VersionCommand())
        with pytest.raises(RuntimeError):
            await bus.dispatch(VersionCommand(version="boom"))

    run(scenario())
    assert calls == ["outer", "inner", "handler",
                     "outer", "inner", "handler", "inner saw the error", "outer saw the error"]


def test_events_reach_every_subscriber_in_order() -> None:
    async def scenario() -> tuple[list[int], list[int]]:
        bus = Bus()
        one, two = bus.subscribe("one"), bus.subscribe("two")
        for n in range(3):
            bus.publish(Tick(n=n))
        got_one = [(await anext(aiter(one))).n for _ in range(3)]
        it = aiter(two)
        got_two = [(await anext(it)).n for _ in range(3)]
        return got_one, got_two

    assert run(scenario()) == ([0, 1, 2], [0, 1, 2])


def test_a_slow_subscriber_is_dropped_and_never_blocks_publishers() -> None:
    async def scenario() -> None:
        bus = Bus(subscriber_queue_size=4)
        slow = bus.subscribe("slow")
        fast = bus.subscribe("fast")
        received: list[int] = []

        async def read_fast() -> None:
            async for event in fast:
                received.append(event.n)
                if event.n == 9:
                    return

        reader = asyncio.create_task(read_fast())
        for n in range(10):
            bus.publish(Tick(n=n))  # never awaits: a full queue cannot block this loop
            await asyncio.sleep(0)
        await asyncio.wait_for(reader, 1)
        assert received == list(range(10))
        assert slow.dropped and bus.subscriber_count == 0  # fast ended, slow was dropped
        with pytest.raises(SubscriberDropped, match="fell more than 4 events behind"):
            async for _ in slow:
                pass

    run(scenario())
