"""Webhook targets: loopback, private, link-local and metadata addresses are
refused where a callback URL enters, unless the allow-list names them
explicitly; a refusal names the address class and opens no socket.

Names are resolved by a fake in this process: nothing is looked up or sent
beyond the machine."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from qrfarm.errors import InvalidCallback, TargetNotAllowed, WebhookTargetRefused
from qrfarm.notify.targets import check_webhook_host, validate_callback_url

from .fakes import FakeNetwork

# The tests' own setting (QRFARM_ALLOWED_HOSTS=127.0.0.1) and the shipped default.
TESTS = ["127.0.0.1"]
DEFAULT = ["*"]


def refusal(url: str, allowed: list[str]) -> str:
    with pytest.raises(InvalidCallback) as caught:
        validate_callback_url(url, allowed_hosts=allowed, secret_configured=True)
    assert isinstance(caught.value.__cause__, TargetNotAllowed)
    return caught.value.rule


@pytest.mark.parametrize("allowed", [DEFAULT, TESTS], ids=["default", "tests"])
@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("http://10.0.0.1/hook", "a private address"),
        ("http://169.254.169.254/latest/meta-data/", "a cloud metadata address"),
        ("https://hooks.loopback.test/hook", "a loopback address"),
        ("http://[::1]:8080/hook", "a loopback address"),
        ("http://[::ffff:127.0.0.2]/hook", "a loopback address"),
        ("http://0.0.0.0:8080/hook", "an unspecified address"),
        ("http://169.254.10.10/hook", "a link-local address"),
        ("http://192.168.1.20/hook", "a private address"),
        ("http://mixed.test/hook", "a private address"),
        # IPv6 forms that reach an IPv4 address through a translator.
        ("http://[64:ff9b::a9fe:a9fe]/hook", "a cloud metadata address"),  # NAT64
        ("http://[::a9fe:a9fe]/hook", "a cloud metadata address"),  # IPv4-compatible
        ("http://[2002:a9fe:a9fe::]/hook", "a cloud metadata address"),  # 6to4
        ("http://[::ffff:0:7f00:2]/hook", "a loopback address"),  # SIIT
        ("http://[64:ff9b::a00:1]/hook", "a private address"),  # NAT64 of 10.0.0.1
        ("http://[fec0::1]/hook", "a private address"),  # site-local
    ],
)
def test_inward_addresses_are_refused_naming_their_class(
    fake_network: FakeNetwork, allowed: list[str], url: str, named: str
) -> None:
    rule = refusal(url, allowed)
    with pytest.raises(WebhookTargetRefused):
        check_webhook_host(allowed, urlsplit(url).hostname or "")
    assert named in rule
    assert "QRFARM_ALLOWED_HOSTS" in rule
    assert fake_network.connections == []


def test_loopback_only_when_the_allow_list_names_it(fake_network: FakeNetwork) -> None:
    assert "a loopback address" in refusal("http://127.0.0.1:8080/hook", DEFAULT)
    assert "a loopback address" in refusal("http://127.0.0.1:8080/hook", ["10.0.0.0/8"])
    url = "http://127.0.0.1:8080/hook"
    assert validate_callback_url(url, allowed_hosts=TESTS, secret_configured=True) == url
    # A name that resolves there is not the address the list names.
    assert "hooks.loopback.test" in refusal("http://hooks.loopback.test:8080/hook", TESTS)
    assert fake_network.connections == []


def test_a_name_listed_explicitly_may_resolve_inwards(fake_network: FakeNetwork) -> None:
    assert check_webhook_host(["ris.internal.test"], "ris.internal.test") == [
        fake_network.address("10.1.2.3")
    ]
    assert "a private address" in refusal("http://ris.internal.test/hook", ["10.0.0.0/8"])


def test_metadata_needs_its_own_entry_not_a_network(fake_network: FakeNetwork) -> None:
    assert "a cloud metadata address" in refusal("http://169.254.169.254/", ["169.254.0.0/16"])
    url = "http://169.254.1.1/hook"
    assert validate_callback_url(url, allowed_hosts=["169.254.0.0/16"], secret_configured=True)
    assert check_webhook_host(["169.254.169.254"], "169.254.169.254")


def test_public_addresses_pass_the_default_and_are_never_contacted(
    fake_network: FakeNetwork,
) -> None:
    url = "https://hooks.public.test/hook"
    assert validate_callback_url(url, allowed_hosts=DEFAULT, secret_configured=True) == url
    assert "not in the outbound allow-list" in refusal(url, TESTS)
    assert "does not resolve" in refusal("https://nowhere.test/hook", DEFAULT)
    assert fake_network.connections == []
