"""docs/install.md and docs/kubelet.md stay true: their crirt configs load, the kubelet settings name crirt's
socket and cgroup driver, and the RuntimeClasses name handlers that the installed plugins serve by default."""

from __future__ import annotations

import re
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import yaml

from crirt.config import Config, load_config
from crirt.shim.contract import ENTRY_POINT_GROUP

DOCS = Path(__file__).resolve().parents[2] / "docs"
PAGES = ("install.md", "kubelet.md")


def blocks(page: str, language: str) -> list[str]:
    """The fenced code blocks of one language on a docs page."""
    return re.findall(rf"^```{language}\n(.*?)^```$", (DOCS / page).read_text(), re.MULTILINE | re.DOTALL)


@pytest.mark.parametrize("page", PAGES)
def test_every_crirt_config_on_the_page_loads(page: str, tmp_path: Path) -> None:
    configs = blocks(page, "toml")
    assert configs, f"{page} shows no crirt config"
    for number, text in enumerate(configs):
        path = tmp_path / f"{number}.toml"
        path.write_text(text)
        load_config(path)  # raises ConfigError naming the bad key


def test_kubelet_settings_match_crirt() -> None:
    documents = [doc for block in blocks("kubelet.md", "yaml") for doc in yaml.safe_load_all(block)]
    (kubelet,) = [doc for doc in documents if doc["kind"] == "KubeletConfiguration"]
    assert kubelet["containerRuntimeEndpoint"] == Config().address
    assert kubelet["imageServiceEndpoint"] == Config().address
    drivers = {re.search(r'^cgroup_driver = "(\w+)"', text, re.MULTILINE) for text in blocks("kubelet.md", "toml")}
    assert {match.group(1) for match in drivers if match} == {kubelet["cgroupDriver"]}


def test_runtime_classes_name_default_handlers_of_the_plugins() -> None:
    documents = [doc for block in blocks("kubelet.md", "yaml") for doc in yaml.safe_load_all(block)]
    handlers = {doc["handler"] for doc in documents if doc["kind"] == "RuntimeClass"}
    offered = {name for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name in ("gvisor", "kata")
               for name in ep.load().default_handlers}
    assert handlers == {"runsc", "kata"} == offered
