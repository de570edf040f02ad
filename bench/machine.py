"""Facts about the machine and the software a run measured, for the report."""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path


@dataclass(frozen=True, slots=True)
class MachineFacts:
    cpu_model: str
    cpu_count: int
    kernel: str
    python: str
    grpcio: str
    protobuf: str
    omnirelay: str
    git_commit: str


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git_commit(repo: Path) -> str:
    """HEAD, marked "+dirty" when the work tree has changes: the figures are then of uncommitted code."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}+dirty" if status.strip() else head


def collect(repo: Path) -> MachineFacts:
    return MachineFacts(
        cpu_model=_cpu_model(),
        cpu_count=os.cpu_count() or 1,
        kernel=platform.release(),
        python=platform.python_version(),
        grpcio=_version("grpcio"),
        protobuf=_version("protobuf"),
        omnirelay=_version("omnirelay"),
        git_commit=_git_commit(repo),
    )
