"""contrib/systemd/crirt.service: systemd's own checker accepts it, and it says what crirt needs of systemd.

``systemd-analyze verify`` loads the unit as systemd would (no running systemd needed) and also checks that
every command it runs exists, so the test verifies a copy whose ExecStart names this environment's ``crirt``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "contrib" / "systemd" / "crirt.service"
INSTALLED_AT = "/opt/crirt/bin/crirt"
CRIRT_HERE = Path(sys.executable).parent / "crirt"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")

needs_systemd_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None,
                                           reason="systemd-analyze not found (Debian package systemd)")


def directives(text: str) -> dict[str, list[str]]:
    """``Section.Key`` -> its values, in order, of a unit file's text."""
    found: dict[str, list[str]] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return found


def verify(unit_text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` of ``unit_text`` saved as crirt.service in a fresh directory."""
    unit = tmp_path / "crirt.service"
    unit.write_text(unit_text)
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run([SYSTEMD_ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60,
                          check=False)


def here(unit_text: str) -> str:
    """The unit with its ExecStart pointed at this environment's crirt instead of /opt/crirt's."""
    assert CRIRT_HERE.exists(), f"{CRIRT_HERE} is missing: crirt is not installed in this environment"
    assert unit_text.count(f"ExecStart={INSTALLED_AT} ") == 1
    return unit_text.replace(f"ExecStart={INSTALLED_AT} ", f"ExecStart={CRIRT_HERE} ")


def test_unit_declares_what_crirt_needs() -> None:
    service = {key.removeprefix("Service."): values for key, values in directives(UNIT.read_text()).items()
               if key.startswith("Service.")}
    assert service["ExecStart"] == [f"{INSTALLED_AT} serve"]
    assert service["Type"] == ["notify"]  # crirt sends READY=1 once its socket answers
    assert service["Delegate"] == ["yes"]
    assert service["KillMode"] == ["process"]  # conmon, the shims and the containers outlive a restart
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]  # crirt.reload
    assert service["Restart"] == ["always"]
    assert int(service["LimitNOFILE"][0]) >= 1048576
    assert -1000 < int(service["OOMScoreAdjust"][0]) < 0


@needs_systemd_analyze
def test_systemd_analyze_verify_passes(tmp_path: Path) -> None:
    result = verify(here(UNIT.read_text()), tmp_path)
    assert result.returncode == 0 and not result.stdout and not result.stderr, result


@needs_systemd_analyze
def test_systemd_analyze_verify_catches_mistakes(tmp_path: Path) -> None:
    """The check above has teeth: a missing binary fails it, and a misspelt key or value is reported."""
    text = UNIT.read_text()
    missing = verify(text.replace(f"ExecStart={INSTALLED_AT} ", f"ExecStart={tmp_path}/no-such-crirt "), tmp_path)
    assert missing.returncode != 0 and "no-such-crirt" in missing.stderr, missing
    misspelt = verify(here(text).replace("Delegate=yes", "Delegat=yes"), tmp_path)
    assert "Unknown key" in misspelt.stderr and "Delegat" in misspelt.stderr, misspelt
    bad_type = verify(here(text).replace("Type=notify", "Type=notified"), tmp_path)
    assert "notified" in bad_type.stderr, bad_type
