"""``probes.fetch.is_ip`` tells a name without parsing it; it must answer as
``ipaddress.ip_address`` would for every host a target can name."""

from __future__ import annotations

import ipaddress

import pytest

from probes.fetch import is_ip

HOSTS = [
    "127.0.0.1", "192.0.2.255", "::1", "2001:db8::1", "::ffff:192.0.2.1", "fe80::1%eth0",
    "example.com", "t0.ec.tls-scale.test", "host1", "10", "01.2.3.4", "1.2.3.4a", "1.2.3",
    "256.1.1.1", "a.b.c.d", "[::1]", "localhost", "", "x", "xn--bcher-kva.example",
]  # fmt: skip


@pytest.mark.parametrize("host", HOSTS)
def test_is_ip_agrees_with_ipaddress(host: str) -> None:
    try:
        ipaddress.ip_address(host)
        expected = True
    except ValueError:
        expected = False
    assert is_ip(host) is expected
