"""Where the project's shared test fixtures (real external files, read in place, never copied) are found.

Looked up in order: $MMSC_SHARED_FIXTURES; `../shared/fixtures` next to this checkout; and, for a clone of a local
checkout (a CI workspace made with `git clone <path>`), `../shared/fixtures` next to the checkout it was cloned from.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _candidates() -> list[Path]:
    found = [Path(os.environ["MMSC_SHARED_FIXTURES"])] if os.environ.get("MMSC_SHARED_FIXTURES") else []
    found.append(REPO.parent / "shared" / "fixtures")
    try:
        origin = subprocess.run(["git", "-C", str(REPO), "config", "--get", "remote.origin.url"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        origin = ""
    if origin and Path(origin).is_dir():
        found.append(Path(origin).resolve().parent / "shared" / "fixtures")
    return found


def shared_fixture(name: str) -> Path:
    """Path of a shared fixture file (the first candidate folder that holds it; else the first candidate's path)."""
    candidates = _candidates()
    for folder in candidates:
        if (folder / name).exists():
            return folder / name
    return candidates[0] / name


def require_shared_fixture(name: str) -> Path:
    """The fixture's path, or skip the test with a message that says where it was looked for."""
    path = shared_fixture(name)
    if not path.exists():
        pytest.skip(f"shared fixture {name} not found (looked in: {', '.join(map(str, _candidates()))}; "
                    "set MMSC_SHARED_FIXTURES)")
    return path


MMSEARCH_R1_MINI = "mmsearch_r1_mini_data.parquet"
