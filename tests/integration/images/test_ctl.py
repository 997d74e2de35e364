"""``crirt ctl pull/images/inspecti/rmi/imagefsinfo`` against a real daemon and registry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from support.daemon import Daemon
from support.images import Catalog, StartDaemon
from support.registry import RemoteRegistry

from crirt.ctl.app import human_size


def ctl(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "crirt", "ctl", "-r", daemon.endpoint, *args],
                          capture_output=True, text=True, timeout=120)


def test_human_sizes_match_crictl() -> None:
    assert [human_size(n) for n in (0, 999, 1000, 2_160_000, 158_595_183, 1_234_567_890)] == [
        "0B", "999B", "1kB", "2.16MB", "159MB", "1.23GB"]
    assert human_size(1_228_800, 4) == "1.229MB"  # crictl stats prints four digits


def test_pull_images_inspecti_rmi_imagefsinfo(crirt_daemon: StartDaemon, catalog: Catalog, tmp_path: Path) -> None:
    daemon = crirt_daemon()
    image_id = catalog.image_id(catalog.facts["multi"])
    pulled = ctl(daemon, "pull", "--annotation", "team=a", catalog["multi"])
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stdout == f"Image is up to date for {image_id}\n"
    assert ctl(daemon, "pull", catalog["multi-again"]).returncode == 0

    table = ctl(daemon, "images").stdout.splitlines()
    assert table[0].split() == ["IMAGE", "TAG", "IMAGE", "ID", "SIZE"]
    name = catalog["multi"].rsplit(":", 1)[0]
    size = human_size(catalog.size(catalog.facts["multi"]))
    assert sorted(line.split() for line in table[1:]) == [[name, "again", image_id[7:20], size],
                                                          [name, "multi", image_id[7:20], size]]
    digests = ctl(daemon, "images", "--digests", "--no-trunc", "--pinned", name).stdout.splitlines()
    assert digests[0].split()[2] == "DIGEST" and digests[1].split()[2] == catalog.facts["multi"]["digest"]
    assert digests[1].split()[-1] == "false"
    assert ctl(daemon, "images", "-q").stdout == f"{image_id}\n"
    listed = json.loads(ctl(daemon, "images", "-o", "json").stdout)
    assert listed["images"][0]["id"] == image_id and listed["images"][0]["uid"] == {"value": "1000"}
    assert "RepoDigests: " in ctl(daemon, "images", "-v").stdout

    inspected = json.loads(ctl(daemon, "inspecti", catalog["multi"]).stdout)
    assert inspected["status"]["id"] == image_id
    assert inspected["status"]["spec"]["annotations"]["team"] == "a"
    assert inspected["info"]["info"]["imageSpec"]["config"]["User"] == "1000:1000"
    missing = ctl(daemon, "inspecti", "nothing/here:1")
    assert missing.returncode == 1 and "no such image" in missing.stderr

    fsinfo = json.loads(ctl(daemon, "imagefsinfo").stdout)["status"]
    assert fsinfo["imageFilesystems"][0]["fsId"]["mountpoint"] == str(daemon.root / "images")
    assert int(fsinfo["imageFilesystems"][0]["usedBytes"]["value"]) > 2_000_000
    assert "container" in ctl(daemon, "imagefsinfo", "-o", "table").stdout

    untag = ctl(daemon, "rmi", catalog["multi-again"])
    assert untag.returncode == 0 and untag.stdout == f"Deleted: {catalog['multi-again']}\n"
    removed = ctl(daemon, "rmi", image_id[7:20])
    assert removed.returncode == 0 and removed.stdout == f"Deleted: {catalog['multi']}\n"
    assert ctl(daemon, "images", "-q").stdout == ""
    absent = ctl(daemon, "rmi", image_id)
    assert absent.returncode == 1 and "no such image" in absent.stderr


def test_pull_with_credentials_and_prune(crirt_daemon: StartDaemon, basic_registry: RemoteRegistry,
                                         catalog: Catalog) -> None:
    daemon = crirt_daemon()
    denied = ctl(daemon, "pull", basic_registry.image)
    assert denied.returncode == 1 and "FAILED_PRECONDITION" in denied.stderr
    assert ctl(daemon, "pull", "--creds", "alice:wonderland", basic_registry.image).returncode == 0
    assert ctl(daemon, "pull", catalog["zstd"]).returncode == 0
    pruned = ctl(daemon, "rmi", "--prune")  # no container uses either image
    assert pruned.returncode == 0 and sorted(pruned.stdout.split("\n")[:-1]) == sorted(
        [f"Deleted: {basic_registry.image}", f"Deleted: {catalog['zstd']}"])
