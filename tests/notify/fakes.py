"""A fake name service and a guard on outgoing connections, for this process.

Every connection a test's code opens is recorded; one to any address but
127.0.0.1 fails at once, before anything is sent. Names resolve from a table
(a name may resolve differently on each lookup, as a rebinding DNS server
would answer); any other name does not resolve at all."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Any

import pytest

NAMES: dict[str, list[str]] = {
    "hooks.loopback.test": ["127.0.0.1"],
    "ris.internal.test": ["10.1.2.3"],
    "hooks.public.test": ["93.184.216.34"],
    "mixed.test": ["93.184.216.34", "10.9.9.9"],
}


@dataclass
class FakeNetwork:
    names: dict[str, list[list[str]]] = field(default_factory=dict)
    lookups: list[str] = field(default_factory=list)
    connections: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name, addresses in NAMES.items():
            self.names[name] = [addresses]

    @staticmethod
    def address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return ipaddress.ip_address(text)

    def answer(self, name: str, *answers: list[str]) -> None:
        """Successive lookups of ``name`` get these answers, the last one repeated."""
        self.names[name] = list(answers)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real_getaddrinfo = socket.getaddrinfo
        real_connect = socket.socket.connect
        real_connect_ex = socket.socket.connect_ex
        network = self

        def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            text = host.decode() if isinstance(host, bytes) else str(host)
            try:
                ipaddress.ip_address(text.split("%")[0])
            except ValueError:
                network.lookups.append(text)
                answers = network.names.get(text.lower())
                if not answers:
                    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None
                addresses = answers.pop(0) if len(answers) > 1 else answers[0]
                return [
                    info for a in addresses for info in real_getaddrinfo(a, port, *args, **kwargs)
                ]
            return real_getaddrinfo(host, port, *args, **kwargs)

        def guard(address: Any) -> None:
            network.connections.append(address)
            if isinstance(address, tuple) and address[0] != "127.0.0.1":
                raise AssertionError(f"a connection to {address!r} was attempted")

        def connect(sock: socket.socket, address: Any) -> None:
            guard(address)
            real_connect(sock, address)

        def connect_ex(sock: socket.socket, address: Any) -> int:
            guard(address)
            return real_connect_ex(sock, address)

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
        monkeypatch.setattr(socket.socket, "connect", connect)
        monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
