"""The reload plan: which changes apply at once, which need a restart, and which handler changes pods forbid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crirt.config import Config
from crirt.reload import LIVE_KEYS, Plan, diff

BASE: dict[str, Any] = {
    "root": "/var/lib/crirt-test",
    "runtimes": {"runc": {"shim": "runc"}, "runsc": {"shim": "gvisor"}},
    "registries": {"docker.io": {"mirrors": ["http://10.0.0.5:5000"]}},
}


def config(**changes: Any) -> Config:
    """The base configuration with top-level keys replaced."""
    return Config(**{**BASE, **changes})


def test_the_same_configuration_is_an_empty_plan() -> None:
    plan = diff(config(), config(), {"runc": 3, "": 2})
    assert plan == Plan() and plan.empty and plan.summary() == "nothing changed"


def test_live_keys_apply_at_once() -> None:
    new = config(log_level="debug", log_format="json", shutdown_grace_period=3,
                 registries={"docker.io": {"mirrors": ["http://10.0.0.6:5000"], "username": "u", "password": "p"}},
                 images={"max_concurrent_downloads": 5, "pinned_images": ["busybox:1"]},
                 cni={"conf_dir": "/etc/cni/other.d", "bin_dirs": ["/opt/cni/bin"]})
    plan = diff(config(), new, {"runc": 1})
    assert not plan.refused
    assert set(plan.changed) == {"log_level", "log_format", "shutdown_grace_period", "registries", "images", "cni"}
    assert plan.changed == tuple(k for k in LIVE_KEYS if k in plan.changed)  # a stable order
    assert plan.summary().startswith("changed log_level, log_format, registries, images, cni")


def test_a_changed_credential_alone_is_a_change() -> None:
    old = config(registries={"r.example": {"username": "u", "password": "old"}})
    new = config(registries={"r.example": {"username": "u", "password": "new"}})
    assert diff(old, new, {}).changed == ("registries",)


def test_keys_that_need_a_restart_are_refused_each_by_name() -> None:
    new = config(address="unix:///run/other.sock", root="/srv/crirt", cgroup_driver="systemd", log_level="debug",
                 streaming={"port": 10010}, grpc={"max_recv_message_size": 4096})
    plan = diff(config(), new, {})
    assert plan.refused == (
        "address: changing it needs a restart ('unix:///run/crirt/crirt.sock' -> 'unix:///run/other.sock')",
        "root: changing it needs a restart ('/var/lib/crirt-test' -> '/srv/crirt')",
        "cgroup_driver: changing it needs a restart ('cgroupfs' -> 'systemd')",
        "grpc.max_recv_message_size: changing it needs a restart ('16777216' -> '4096')",
        "streaming.port: changing it needs a restart ('0' -> '10010')",
    )
    assert plan.changed == ("log_level",) and not plan.empty  # reported, but the whole reload is refused


def test_handlers_no_pod_uses_are_added_replaced_and_removed() -> None:
    new = config(runtimes={"runc": {"shim": "runc", "options": {"systemd_cgroup": True}},
                           "kata": {"shim": "kata"}})
    plan = diff(config(), new, {})
    assert (plan.added, plan.replaced, plan.removed, plan.refused) == (("kata",), ("runc",), ("runsc",), ())
    assert plan.changed == ("runtimes",)
    assert plan.summary() == ("changed runtimes; runtime handlers added: 'kata'; runtime handlers replaced: 'runc'; "
                              "runtime handlers removed: 'runsc'")


def test_handlers_in_use_cannot_be_removed_or_changed() -> None:
    new = config(runtimes={"runc": {"shim": "runc", "options": {"binary": "/usr/local/bin/runc"}}})
    plan = diff(config(), new, {"runsc": 2, "": 1})  # the pod that asked for '' runs on the default, runc
    assert plan.refused == (
        "runtimes.runsc: cannot be removed while 2 pod(s) use it; remove them first",
        "runtimes.runc: cannot be changed while 1 pod(s) use it (their containers stay on its running shim); "
        "remove them first or restart crirt",
    )
    assert diff(config(), new, {"kata": 0}).refused == ()  # a count of zero is no use


def test_the_default_handler_changes_only_while_no_pod_asked_for_it() -> None:
    new = config(default_runtime="runsc")
    assert diff(config(), new, {"runc": 4}) == Plan(changed=("default_runtime",))
    refused = diff(config(), new, {"": 1}).refused
    assert refused == ("default_runtime: cannot change from 'runc' to 'runsc' while 1 pod(s) asked for the "
                       "default handler",)


def test_keys_inside_other_sections_need_a_restart_too() -> None:
    assert "sandboxes" not in LIVE_KEYS and "cdi" not in LIVE_KEYS
    plan = diff(config(), config(sandboxes={"infra_binary": Path("/usr/local/bin/catatonit")}), {})
    assert plan.refused == ("sandboxes.infra_binary: changing it needs a restart ('/usr/bin/catatonit' -> "
                            "'/usr/local/bin/catatonit')",)
