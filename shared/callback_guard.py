"""Callback URLs may not point into private networks (server-side request forgery).

allowed_networks(text) -> list of ip networks, from a comma-separated setting.
blocked_address(address, allowed) -> True when the address is private, loopback, link-local,
    reserved, multicast or unspecified and not inside an allowed network.
check_callback_url(url, allowed, strict=True) -> None, or CallbackRefused naming the reason.
    The host is resolved (every address it resolves to must pass); a host that does not resolve
    is refused only when strict is True (delivery), not at submission.
"""

import ipaddress
import socket
from urllib.parse import urlparse

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class CallbackRefused(ValueError):
    """The callback URL points somewhere biofleet does not post to."""


def allowed_networks(text: str) -> list[Network]:
    """'127.0.0.0/8, ::1' -> [IPv4Network('127.0.0.0/8'), IPv6Network('::1/128')]."""
    return [ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip()]


def blocked_address(address: Address, allowed: list[Network]) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address.version == net.version and address in net for net in allowed):
        return False
    return (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_reserved
        or address.is_multicast
        or address.is_unspecified
    )


def _addresses(host: str, port: int) -> list[Address]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]


def check_callback_url(url: str, allowed: list[Network], strict: bool = True) -> None:
    """Raise CallbackRefused when url's host is, or resolves to, a blocked address."""
    parsed = urlparse(url)
    host = parsed.hostname
    if not host:
        raise CallbackRefused("the callback URL has no host")
    try:
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
    except ValueError:
        raise CallbackRefused("the callback URL has an invalid port") from None
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            addresses = _addresses(host, port)
        except (OSError, UnicodeError):
            if strict:
                raise CallbackRefused("the callback host does not resolve") from None
            return
    for address in addresses:
        if blocked_address(address, allowed):
            raise CallbackRefused("the callback host is in a private, loopback or link-local network")
