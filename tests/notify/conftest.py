from __future__ import annotations

from collections.abc import Iterator

import pytest

from .fakes import FakeNetwork


@pytest.fixture
def fake_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeNetwork]:
    """Names resolved from a table in this process; connections anywhere but
    127.0.0.1 refused and recorded."""
    network = FakeNetwork()
    network.install(monkeypatch)
    yield network
