"""Callback URLs may only reach globally routable addresses (server-side request forgery).

allowed_networks(text) -> list of ip networks, from a comma-separated setting.
blocked_address(address, allowed) -> True when the address is not globally routable (private,
    loopback, link-local, shared 100.64.0.0/10, reserved, multicast, ...) and not inside an
    allowed network.
check_callback_url(url, allowed, strict=True) -> Target (scheme, host, port, addresses), or
    CallbackRefused naming the reason. The host is resolved once and every address it resolves
    to must pass; a host that does not resolve is refused only when strict is True (delivery),
    not at submission. The caller connects to target.addresses, never resolving the host again
    (a name that answers a public address for the check and 169.254.169.254 for the post).
resolve(host, port) -> addresses; socket.getaddrinfo, looked up at each call.
"""

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlparse

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class CallbackRefused(ValueError):
    """The callback URL points somewhere biofleet does not post to."""


@dataclass(frozen=True)
class Target:
    """A checked callback URL: connect to one of addresses, send Host and TLS server name = host."""

    scheme: str
    host: str
    port: int
    addresses: tuple[Address, ...]


def allowed_networks(text: str) -> list[Network]:
    """'127.0.0.0/8, ::1' -> [IPv4Network('127.0.0.0/8'), IPv6Network('::1/128')]."""
    return [ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip()]


def blocked_address(address: Address, allowed: list[Network]) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address.version == net.version and address in net for net in allowed):
        return False
    return not address.is_global or address.is_multicast


def resolve(host: str, port: int) -> list[Address]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


def check_callback_url(url: str, allowed: list[Network], strict: bool = True) -> Target | None:
    """The checked Target, or CallbackRefused when url's host is, or resolves to, a blocked
    address. None when the host does not resolve and strict is False."""
    parsed = urlparse(url)
    host = parsed.hostname
    if not host:
        raise CallbackRefused("the callback URL has no host")
    if parsed.scheme not in ("http", "https"):
        raise CallbackRefused("the callback URL must be http or https")
    try:
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
    except ValueError:
        raise CallbackRefused("the callback URL has an invalid port") from None
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            addresses = resolve(host, port)
        except (OSError, UnicodeError):
            if strict:
                raise CallbackRefused("the callback host does not resolve") from None
            return None
    if not addresses:
        raise CallbackRefused("the callback host does not resolve")
    for address in addresses:
        if blocked_address(address, allowed):
            raise CallbackRefused("the callback host is not a globally routable address")
    return Target(scheme=parsed.scheme, host=host, port=port, addresses=tuple(dict.fromkeys(addresses)))
