"""Callback URLs into private networks are refused unless allowed (shared.callback_guard)."""

import ipaddress

import pytest

from shared.callback_guard import CallbackRefused, allowed_networks, blocked_address, check_callback_url


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "172.16.0.9", "192.168.1.1", "169.254.169.254", "0.0.0.0", "::1", "fe80::1",
     "fc00::1", "::ffff:127.0.0.1", "224.0.0.1"],
)  # fmt: skip
def test_private_loopback_and_link_local_are_blocked(address):
    assert blocked_address(ipaddress.ip_address(address), [])


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_pass(address):
    assert not blocked_address(ipaddress.ip_address(address), [])


def test_the_allow_list_lets_a_network_through():
    allowed = allowed_networks(" 127.0.0.0/8 , 10.0.0.0/8")
    assert not blocked_address(ipaddress.ip_address("127.0.0.1"), allowed)
    assert not blocked_address(ipaddress.ip_address("10.9.9.9"), allowed)
    assert blocked_address(ipaddress.ip_address("192.168.0.1"), allowed)
    assert allowed_networks("") == []


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8080/x", "https://[::1]/x", "http://169.254.169.254/latest/meta-data", "http://localhost/x"],
)
def test_urls_into_private_networks_are_refused(url):
    with pytest.raises(CallbackRefused):
        check_callback_url(url, [])
    with pytest.raises(CallbackRefused):
        check_callback_url(url, [], strict=False)


def test_allowed_loopback_passes_and_unresolvable_hosts_depend_on_strictness():
    check_callback_url("http://127.0.0.1:9/hook", allowed_networks("127.0.0.1/32"))
    check_callback_url("https://no-such-host.invalid/hook", [], strict=False)
    with pytest.raises(CallbackRefused):
        check_callback_url("https://no-such-host.invalid/hook", [])


@pytest.mark.parametrize("address", ["100.64.0.1", "100.100.100.200", "100.127.255.254", "198.18.0.1", "240.0.0.1"])
def test_addresses_that_are_not_globally_routable_are_blocked(address):
    """Shared address space (100.64.0.0/10, where one cloud serves its metadata at 100.100.100.200),
    benchmarking and reserved ranges are not private, but not global either."""
    assert blocked_address(ipaddress.ip_address(address), [])


def test_shared_address_space_is_refused_in_a_url():
    with pytest.raises(CallbackRefused):
        check_callback_url("http://100.100.100.200/latest/meta-data", [])


def test_the_checked_addresses_are_returned_for_pinning(monkeypatch):
    import socket

    answers = iter([[(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", 443))]])
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: next(answers))
    target = check_callback_url("https://hooks.example.com/x", [])
    assert (target.scheme, target.host, target.port) == ("https", "hooks.example.com", 443)
    assert [str(a) for a in target.addresses] == ["93.184.216.34"]
