"""qrfarm as a user installs it: an sdist, the wheel built from it, installed in a fresh
virtual environment, running `qrfarm demo` from an empty folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _source_copy(destination: Path) -> Path:
    """The files git would check out (tracked, and new ones not ignored): what CI builds."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def _run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    run = subprocess.run(args, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    assert run.returncode == 0, f"{args}\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return run  # type: ignore[no-any-return]


@pytest.mark.timeout(900)
def test_the_wheel_built_from_the_sdist_installs_and_runs_the_demo_from_an_empty_folder(
    tmp_path: Path,
) -> None:
    source = _source_copy(tmp_path / "source")
    dist = tmp_path / "dist"
    # With no --sdist/--wheel, build makes the sdist, then the wheel from it:
    # a file missing from the sdist is missing from the wheel.
    _run([sys.executable, "-m", "build", "--outdir", str(dist), str(source)])
    (sdist,) = dist.glob("qrfarm-*.tar.gz")
    (wheel,) = dist.glob("qrfarm-*.whl")
    with tarfile.open(sdist) as archive:
        in_sdist = {Path(n).name for n in archive.getnames()}
    assert {"LICENSE", "CHANGELOG.md", "README.md", "pyproject.toml"} <= in_sdist
    with zipfile.ZipFile(wheel) as archive:
        in_wheel = set(archive.namelist())
    assert "qrfarm/py.typed" in in_wheel
    assert "qrfarm/models/migrations/script.py.mako" in in_wheel
    # The console's pages and its own script and style.
    assert {
        "qrfarm/console/templates/base.html",
        "qrfarm/console/templates/job.html",
        "qrfarm/console/static/console.js",
        "qrfarm/console/static/console.css",
    } <= in_wheel
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in in_wheel), in_wheel

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)])
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QRFARM_", "PYTHON"))}
    env.update(QRFARM_ALLOWED_HOSTS="127.0.0.1", COLUMNS="200")
    version = _run([str(venv / "bin" / "qrfarm"), "--version"], cwd=empty, env=env)
    assert version.stdout.startswith("qrfarm ")
    demo = _run([str(venv / "bin" / "qrfarm"), "demo"], cwd=empty, env=env, timeout=600)
    assert "every job reconciled and completed" in demo.stdout, demo.stdout
    assert list(empty.iterdir()) == [], "the demo left files in the folder it ran from"
