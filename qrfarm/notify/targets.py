"""Where a webhook may go: the outbound allow-list, stricter for addresses inside.

Loopback, private, link-local, cloud metadata, unspecified, multicast and
other non-public addresses are refused unless the allow-list
(``QRFARM_ALLOWED_HOSTS``) names them explicitly; ``*`` admits public
addresses only. For a URL that names an address, an entry that is that
address, or a network around it, lists it (a metadata address needs its own
entry, not a network around it). For a URL that names a host, every address
it resolves to must pass, and one inside passes only when that name itself is
listed: a name is not the address it happens to resolve to today.

The same check runs where a callback URL enters (submit, prefetch) and again
at delivery, whose connection then goes to the address checked.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from urllib.parse import urlsplit

from qrfarm.errors import InvalidCallback, PermanentError, TargetNotAllowed, WebhookTargetRefused

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

METADATA_CLASS = "a cloud metadata address"
METADATA = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean
        "169.254.170.2",  # AWS ECS task metadata
        "fd00:ec2::254",  # AWS over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud
    )
)
PRIVATE = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)


# IPv6 forms that carry an IPv4 address in their last 32 bits and reach it
# through a translator: NAT64 (RFC 6052, also its local-use prefix), SIIT's
# IPv4-translated form, and the deprecated IPv4-compatible form.
_EMBEDDING = tuple(
    ipaddress.ip_network(n) for n in ("64:ff9b::/96", "64:ff9b:1::/48", "::ffff:0:0:0/96", "::/96")
)
# Deprecated site-local unicast (RFC 3879): as private as fc00::/7.
_SITE_LOCAL = ipaddress.ip_network("fec0::/10")


def _plain(address: IPAddress) -> IPAddress:
    """An IPv6 address that carries an IPv4 one (mapped, NAT64, translated,
    compatible, 6to4) as the IPv4 address it reaches."""
    if not isinstance(address, ipaddress.IPv6Address):
        return address
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if any(address in network for network in _EMBEDDING) and int(address) > 1:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def address_class(address: IPAddress) -> str | None:
    """The class of an address refused unless listed, or None for a public one."""
    address = _plain(address)
    if address in METADATA:
        return METADATA_CLASS
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if any(address in network for network in PRIVATE) or address in _SITE_LOCAL:
        return "a private address"
    if not address.is_global:
        return "a reserved address"
    return None


def resolve(host: str) -> list[IPAddress]:
    """Every address ``host`` names, once each, in the resolver's order."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):  # UnicodeError: a label empty or over 63 characters
        return []
    found: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if address not in found:
            found.append(address)
    return found


def _networks(entries: Sequence[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            continue
    return networks


def check_webhook_host(allowed_hosts: Sequence[str], host: str) -> list[IPAddress]:
    """The addresses ``host`` resolves to, all allowed; else TargetNotAllowed
    (WebhookTargetRefused, naming the class, for an address inside)."""
    entries = [e.strip().lower() for e in allowed_hosts]
    host = host.lower()
    try:
        ipaddress.ip_address(host)
        literal = True
    except ValueError:
        literal = False
    addresses = resolve(host)
    if not addresses:
        raise TargetNotAllowed(f"webhook host {host!r} does not resolve")
    if host in entries and not literal:
        return addresses  # the name is listed itself: whatever it resolves to
    networks = _networks([e for e in entries if e != "*"])
    classed = [(a, address_class(a)) for a in addresses]
    # Addresses inside first, so the refusal names the class that matters.
    for address, klass in sorted(classed, key=lambda pair: pair[1] is None):
        plain = _plain(address)
        covering = [n for n in networks if plain in n]
        if klass is None:
            if "*" in entries or covering:
                continue
            allowed = ", ".join(allowed_hosts) or "nothing"
            raise TargetNotAllowed(
                f"webhook host {host!r} is not in the outbound allow-list"
                f" (QRFARM_ALLOWED_HOSTS: {allowed})"
            )
        if literal:
            if klass == METADATA_CLASS:
                covering = [n for n in covering if n.num_addresses == 1]
                hint = "only an entry of this very address in QRFARM_ALLOWED_HOSTS allows it"
            else:
                hint = "list the address or its network in QRFARM_ALLOWED_HOSTS to allow it"
            if covering:
                continue
        else:
            hint = f"only the name {host!r} itself in QRFARM_ALLOWED_HOSTS allows it"
        raise WebhookTargetRefused(host, str(address), klass, hint)
    return addresses


def validate_callback_url(
    url: str, *, allowed_hosts: Sequence[str], secret_configured: bool
) -> str:
    """The URL, or InvalidCallback naming the rule it breaks."""
    if not secret_configured:
        raise InvalidCallback(url, "webhooks need a shared secret: set QRFARM_WEBHOOK_SECRET")
    if len(url) > 2048:
        raise InvalidCallback(url[:64] + "…", "longer than 2048 characters")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise InvalidCallback(url, f"not a valid URL ({exc})") from exc
    if parts.scheme not in ("http", "https"):
        raise InvalidCallback(url, "the scheme must be http or https")
    try:
        host = parts.hostname
        _ = parts.port  # raises on a port out of range
    except ValueError as exc:
        raise InvalidCallback(url, f"not a valid URL ({exc})") from exc
    if not host:
        raise InvalidCallback(url, "names no host")
    if parts.username or parts.password:
        raise InvalidCallback(url, "credentials in the URL are not accepted")
    try:
        check_webhook_host(allowed_hosts, host)
    except PermanentError as exc:
        raise InvalidCallback(url, str(exc)) from exc
    return url
