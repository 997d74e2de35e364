"""The pure half of UpdateContainerResources: merging an update and rewriting the bundle spec."""

from __future__ import annotations

from crirt.containers.update import merged_resources, updated_config, updated_spec
from crirt.model.common import LinuxContainerResources
from crirt.model.container import ContainerConfig, ContainerMetadata


def test_zero_and_empty_fields_keep_the_current_values() -> None:
    current = LinuxContainerResources(cpu_shares=512, memory_limit_in_bytes=64 << 20, cpuset_cpus="0",
                                      oom_score_adj=100, unified={"memory.high": "1000000"})
    update = LinuxContainerResources(memory_limit_in_bytes=128 << 20, unified={"pids.max": "10"})
    merged = merged_resources(current, update)
    assert merged.memory_limit_in_bytes == 128 << 20
    assert (merged.cpu_shares, merged.cpuset_cpus, merged.oom_score_adj) == (512, "0", 100)
    assert merged.unified == {"memory.high": "1000000", "pids.max": "10"}


def test_an_update_of_a_container_without_limits_is_taken_whole() -> None:
    update = LinuxContainerResources(cpu_quota=50000, cpu_period=100000)
    assert merged_resources(None, update) == update


def test_the_config_gets_the_new_resources_and_keeps_the_rest() -> None:
    config = ContainerConfig(metadata=ContainerMetadata(name="c"), command=["sleep"])
    resources = LinuxContainerResources(cpu_shares=2)
    result = updated_config(config, resources)
    assert result.linux is not None and result.linux.resources == resources
    assert (result.metadata, result.command) == (config.metadata, config.command)


def test_the_spec_keeps_its_device_rules_and_replaces_the_limits() -> None:
    devices = [{"allow": False, "access": "rwm"}]
    spec = {"process": {"args": ["sh"]}, "linux": {"resources": {"devices": devices, "memory": {"limit": 1},
                                                                 "cpu": {"shares": 2}}}}
    result = updated_spec(spec, {"memory": {"limit": 2, "swap": 2}})
    assert result["linux"]["resources"] == {"devices": devices, "memory": {"limit": 2, "swap": 2}}
    assert result["process"] == spec["process"]
    assert spec["linux"]["resources"]["memory"] == {"limit": 1}  # the input is left alone
