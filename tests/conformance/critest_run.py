"""Run critest v1.36.0 against a crirt daemon and judge its ginkgo JSON report against lists of accepted
failures and expected skips (shared by the runc and the runsc runs)."""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .conftest import CRI_TOOLS, CriEnv

ARTIFACTS = Path(__file__).resolve().parents[1] / ".artifacts"
SKIP = "AppArmor"
"""``--ginkgo.skip``: the host has AppArmor off, so these specs cannot pass (README of cri-tools in shared/)."""
EXPECTED_SKIPS: dict[str, str] = {
    "[k8s.io] AppArmor ": "left out with --ginkgo.skip: AppArmor is off on this kind of host",
    "benchmark about ": "benchmarks run only with -benchmark",
}
"""Name fragments of specs that skip by design, and why; any other skip fails the run."""


def spec_name(report: dict[str, Any]) -> str:
    return " ".join([*report["ContainerHierarchyTexts"], report["LeafNodeText"]])


def specs(report_file: Path) -> dict[str, dict[str, Any]]:
    """Spec name -> its ginkgo report entry (``It`` nodes only: suite set-up nodes are not specs)."""
    suites = json.loads(report_file.read_text())
    return {spec_name(spec): spec for suite in suites for spec in suite["SpecReports"]
            if spec["LeafNodeType"] == "It"}


def failure_message(spec: dict[str, Any]) -> str:
    failure = spec.get("Failure") or {}
    location = failure.get("Location", {})
    return f"{failure.get('Message', '').strip()} ({location.get('FileName', '?')}:{location.get('LineNumber', '?')})"


@dataclass
class Outcome:
    """A critest run: its specs by state, and the accepted failures it was judged against."""

    passed: list[str]
    failed: dict[str, dict[str, Any]]
    skipped: list[str]
    accepted: dict[str, str]
    expected_skips: dict[str, str]

    def summary(self) -> str:
        return f"critest: {len(self.passed)} passed, {len(self.failed)} failed, {len(self.skipped)} skipped"

    def check(self) -> None:
        """Fails on a failure that is not accepted, a skip that is not expected, or a run of too few specs."""
        unexpected = {name: failure_message(spec) for name, spec in self.failed.items() if name not in self.accepted}
        assert not unexpected, f"critest specs failed: {json.dumps(unexpected, indent=1)}"
        surprise = [name for name in self.skipped
                    if not any(fragment in name for fragment in self.expected_skips)]
        assert not surprise, f"critest skipped specs expected to run: {surprise}"
        total = len(self.passed) + len(self.failed) + len(self.skipped)
        assert total > 100 and self.passed, f"critest ran only {total} specs"


def left_behind(cri_env: CriEnv, wait: float = 10.0) -> list[str]:
    """What remains on the node of critest's pods once the pods it left are removed (a spec that fails stops
    before its own clean-up), after up to ``wait`` seconds: processes whose command line names the daemon's
    directory (conmon, runsc sandboxes and gofers, holders; the daemon itself aside), and mounts under its pods
    and rootfs directories (namespace pins, /dev/shm, overlays)."""
    removed = subprocess.run([str(CRI_TOOLS / "crictl"), *cri_env.endpoint_args(), "--timeout", "60s", "rmp",
                              "--all", "--force"], capture_output=True, text=True, timeout=600)
    assert removed.returncode == 0, f"crictl rmp --all --force: {removed.stderr[-2000:]}"
    base = str(cri_env.base / "d")
    deadline = time.monotonic() + wait
    while True:
        found = [f"process {pid}: {args[:160]}" for pid, args in _processes()
                 if base in args and pid != cri_env.daemon.proc.pid]
        points = [line.split(" ")[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        found += [f"mount {point}" for point in points
                  if point.startswith((f"{base}/state/pods/", f"{base}/root/rootfs/"))]
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def _processes() -> list[tuple[int, str]]:
    """(pid, command line) of every process that is still there when read."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found.append((int(entry.name), (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                    errors="replace")))
            except OSError:
                continue
    return found


def run_critest(cri_env: CriEnv, name: str, accepted: dict[str, str], extra_args: tuple[str, ...] = (),
                expected_skips: dict[str, str] = EXPECTED_SKIPS) -> Outcome:
    """Run critest (``extra_args`` added), keep its report as ``tests/.artifacts/<name>-report.json`` and its
    output as ``<name>-output.txt``, print the outcome and return it. ``accepted``: spec name -> why it may fail;
    ``expected_skips``: name fragment -> why specs with it may skip."""
    ARTIFACTS.mkdir(exist_ok=True)
    report_file = ARTIFACTS / f"{name}-report.json"
    output_file = ARTIFACTS / f"{name}-output.txt"
    report_file.unlink(missing_ok=True)
    argv = [str(CRI_TOOLS / "critest"), *cri_env.endpoint_args(), "--ginkgo.no-color",
            f"--ginkgo.json-report={report_file}", f"--ginkgo.skip={SKIP}", *extra_args]
    started = time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True, timeout=3300, cwd=cri_env.base)
    elapsed = time.monotonic() - started
    output_file.write_text(result.stdout + result.stderr)
    assert report_file.is_file(), f"critest wrote no report (exit {result.returncode}):\n{result.stderr[-3000:]}"

    ran = specs(report_file)
    states = {spec: report["State"] for spec, report in ran.items()}
    outcome = Outcome(passed=[spec for spec, state in states.items() if state == "passed"],
                      failed={spec: ran[spec] for spec, state in states.items() if state not in ("passed", "skipped")},
                      skipped=sorted(spec for spec, state in states.items() if state == "skipped"),
                      accepted=accepted, expected_skips=expected_skips)
    print(f"\ncritest report: {report_file} (output: {output_file}), {elapsed:.0f}s")
    print(outcome.summary())
    for spec in outcome.skipped:
        print(f"  skipped: {spec}")
    for spec, report in sorted(outcome.failed.items()):
        print(f"  {'accepted' if spec in accepted else 'FAILED'}: {spec}: {failure_message(report)}")
    for spec in sorted(set(accepted) & set(outcome.passed)):
        print(f"  now passes, remove it from the accepted failures: {spec}")
    return outcome
