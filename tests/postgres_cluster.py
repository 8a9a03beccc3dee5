"""A PostgreSQL cluster of a test's own (initdb, its own port), to stop and start at will.

Never the machine's server: a test that stops a database stops only this one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.peers.ports import free_port


def _bin(tool: str) -> str:
    found = sorted(str(p) for p in Path("/usr/lib/postgresql").glob(f"*/bin/{tool}"))
    if not found:
        message = f"PostgreSQL server binaries ({tool}) are not installed"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found[-1]


def _as_postgres(argv: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return argv


@dataclass
class OwnPostgres:
    directory: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _pg_ctl(self, *args: str) -> None:
        subprocess.run(
            _as_postgres([_bin("pg_ctl"), "-D", str(self.directory / "data"), *args]),
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        log = self.directory / "postgres.log"
        try:
            self._pg_ctl(
                "-w",
                "-l",
                str(log),
                "-o",
                f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1",
                "start",
            )
        except subprocess.CalledProcessError as exc:
            # Why, in the failure itself: the test's folder may be gone when it is read.
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
            raise RuntimeError(f"PostgreSQL did not start on port {self.port}:\n{tail}") from exc

    def stop(self) -> None:
        self._pg_ctl("-w", "-m", "fast", "stop")


@contextmanager
def run_own_postgres(directory: Path) -> Iterator[OwnPostgres]:
    directory.mkdir(parents=True)
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres", "postgres")
        # runuser needs to reach the folder through the temp path.
        for parent in directory.parents:
            if parent == Path("/tmp") or parent == Path("/"):
                break
            parent.chmod(parent.stat().st_mode | 0o711)
    subprocess.run(
        _as_postgres(
            [
                _bin("initdb"),
                "-D",
                str(directory / "data"),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ]
        ),
        check=True,
        capture_output=True,
        timeout=120,
    )
    cluster = OwnPostgres(directory, free_port())
    cluster.start()
    try:
        yield cluster
    finally:
        subprocess.run(
            _as_postgres(
                [_bin("pg_ctl"), "-D", str(directory / "data"), "-m", "immediate", "stop"]
            ),
            capture_output=True,
            check=False,
            timeout=60,
        )
