"""Tests of netguard.py: which addresses and URLs are refused, the guarded resolver and
session, and, end to end, that fetch_audio and webhook attempts aimed at loopback never open a
connection. Every listener here is on loopback and counts the connections it accepts."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import pickle
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from serve_app.outbound.fetch import FetchError, fetch_audio
from serve_app.outbound.netguard import (
    DEFAULT_POLICY,
    GuardedResolver,
    OutboundError,
    OutboundPolicy,
    check_url,
    guarded_session,
    guarded_socket_factory,
    literal_address,
    refusal,
    refused_reason,
)
from serve_app.outbound.webhooks import RetrySchedule, attempt, new_secret, webhook_session
from serve_app.store.records import Delivery, DeliveryState

LOOPBACK = OutboundPolicy(allowed_networks=("127.0.0.0/8", "::1/128"))
ONLY_127_0_0_1 = OutboundPolicy(allowed_networks=("127.0.0.1/32",))
BODY = b"RIFF-not-really-audio"
NOW = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
LOOPBACK_V4 = "points to 127.0.0.1, a loopback address, which this service does not reach"
LOCALHOST = "points to localhost, a name for a loopback address, which this service does not reach"


# --- refused_reason --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.254", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),  # the cloud metadata endpoint
        ("169.254.0.1", "link-local"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("100.127.255.254", "carrier-grade NAT"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("0.0.0.0", "'this network'"),
        ("0.1.2.3", "'this network'"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "broadcast"),
        ("198.18.0.1", "benchmarking"),
        ("198.19.255.254", "benchmarking"),
        ("192.0.2.1", "documentation"),
        ("198.51.100.1", "documentation"),
        ("203.0.113.1", "documentation"),
        ("192.0.0.8", "IETF protocol"),
        ("192.88.99.1", "6to4 relay"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fc00::1", "unique local"),
        ("fd12:3456::1", "unique local"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("ff02::1", "multicast"),
        ("fec0::1", "site-local"),
        ("2001:db8::1", "documentation"),
        ("3fff::1", "documentation"),
        ("100::1", "discard-only"),
        ("2001:2::1", "benchmarking"),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
        ("64:ff9b:1::a00:1", "local-use NAT64"),
        # IPv4 addresses wrapped in IPv6: the v4 inside decides.
        ("::ffff:127.0.0.1", "loopback address inside an IPv6 address"),
        ("::ffff:169.254.169.254", "link-local address inside"),
        ("::ffff:10.0.0.1", "private address inside"),
        ("::127.0.0.1", "loopback address inside"),
        ("::10.0.0.1", "private address inside"),
        ("::0.0.0.2", "'this network' address inside"),
        ("64:ff9b::127.0.0.1", "loopback address inside"),
        ("64:ff9b::a9fe:a9fe", "link-local address inside"),
        ("2002:7f00:1::1", "loopback address inside"),
        ("2002:c0a8:101::1", "private address inside"),
        ("2002:a9fe:a9fe::", "link-local address inside"),
    ],
)
def test_refused_reason_names_the_range(address: str, reason: str) -> None:
    found = refused_reason(ipaddress.ip_address(address))
    assert found is not None
    assert reason in found


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "1.1.1.1",
        "93.184.216.34",
        "2606:4700:4700::1111",
        "2a00:1450:4001:82b::200e",
        # Public IPv4 wrapped in IPv6 stays public, though Python 3.11 calls these reserved.
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
        "2002:808:808::1",
    ],
)
def test_refused_reason_accepts_public_addresses(address: str) -> None:
    assert refused_reason(ipaddress.ip_address(address)) is None


# --- OutboundPolicy ----------------------------------------------------------------------------


def test_default_policy_refuses_private_and_allows_public() -> None:
    assert not DEFAULT_POLICY.permits_address(ipaddress.ip_address("127.0.0.1"))
    assert DEFAULT_POLICY.permits_address(ipaddress.ip_address("8.8.8.8"))
    assert DEFAULT_POLICY.permits_port(22)


def test_allow_private_permits_every_address() -> None:
    policy = OutboundPolicy(allow_private=True)
    for address in ("127.0.0.1", "169.254.169.254", "::1", "fd00::1"):
        assert policy.permits_address(ipaddress.ip_address(address))


def test_allowed_networks_permit_only_their_addresses() -> None:
    assert ONLY_127_0_0_1.permits_address(ipaddress.ip_address("127.0.0.1"))
    # The IPv4-mapped form reaches the same host, so it is allowed with it.
    assert ONLY_127_0_0_1.permits_address(ipaddress.ip_address("::ffff:127.0.0.1"))
    assert not ONLY_127_0_0_1.permits_address(ipaddress.ip_address("127.0.0.2"))
    assert not ONLY_127_0_0_1.permits_address(ipaddress.ip_address("::1"))
    assert not ONLY_127_0_0_1.permits_address(ipaddress.ip_address("10.0.0.1"))


def test_allowed_ports_restrict_ports() -> None:
    policy = OutboundPolicy(allowed_ports=(80, 443))
    assert policy.permits_port(443)
    assert not policy.permits_port(8080)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"allowed_networks": ("10.0.0.0/33",)}, "allowed_networks"),
        ({"allowed_networks": ("localhost",)}, "allowed_networks"),
        ({"allowed_ports": (0,)}, "allowed_ports"),
        ({"allowed_ports": (70000,)}, "allowed_ports"),
    ],
)
def test_policy_refuses_nonsense_at_construction(
    settings: dict[str, tuple[str, ...] | tuple[int, ...]], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        OutboundPolicy(**settings)  # type: ignore[arg-type]


def test_policy_and_error_survive_pickling() -> None:
    # Both cross process boundaries: the policy in actor arguments, the error in task results.
    assert pickle.loads(pickle.dumps(LOOPBACK)) == LOOPBACK
    error = pickle.loads(pickle.dumps(OutboundError(LOOPBACK_V4, "audio_url")))
    assert (error.reason, error.what) == (LOOPBACK_V4, "audio_url")
    assert str(error) == f"audio_url {LOOPBACK_V4}"


# --- check_url ---------------------------------------------------------------------------------


def refused_url(url: str, policy: OutboundPolicy = DEFAULT_POLICY) -> str:
    with pytest.raises(OutboundError) as caught:
        check_url(url, policy, what="webhook_url")
    return str(caught.value)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://example.com/a.mp3", "must use http or https, not 'ftp'"),
        ("file:///etc/passwd", "must use http or https, not 'file'"),
        ("gopher://example.com:70/", "must use http or https, not 'gopher'"),
        ("example.com/a.mp3", "must start with http:// or https://"),
        ("https://user:pw@example.com/", "must not contain a user name or password"),
        ("https://@example.com/", "must not contain a user name or password"),
        ("http:///a.mp3", "must name a host"),
        ("http://example.com:0/", "must not use port 0"),
        ("http://example.com:99999/", "is not a valid URL"),
    ],
)
def test_check_url_refuses_bad_syntax(url: str, problem: str) -> None:
    assert refused_url(url) == f"webhook_url {problem}"


def test_check_url_returns_the_host() -> None:
    assert check_url("HTTPS://Example.COM/a.mp3", DEFAULT_POLICY, what="audio_url") == "example.com"
    assert check_url("http://8.8.8.8:8080/", DEFAULT_POLICY, what="audio_url") == "8.8.8.8"
    assert check_url("http://[::1]:8080/", LOOPBACK, what="audio_url") == "::1"


def test_check_url_applies_the_port_policy_to_default_and_explicit_ports() -> None:
    policy = OutboundPolicy(allowed_ports=(443,))
    assert check_url("https://example.com/", policy, what="audio_url") == "example.com"
    assert check_url("https://example.com:443/", policy, what="audio_url") == "example.com"
    assert refused_url("http://example.com/", policy) == (
        "webhook_url uses port 80, which this service does not connect to"
    )
    assert refused_url("https://example.com:8443/", policy) == (
        "webhook_url uses port 8443, which this service does not connect to"
    )


MAPPED = "a loopback address inside an IPv6 address"


@pytest.mark.parametrize(
    ("host", "shown", "kind"),
    [
        ("127.0.0.1", "127.0.0.1", "a loopback address"),
        # 127.0.0.1 as one decimal number: the address is named beside the spelling.
        ("2130706433", "2130706433 (127.0.0.1)", "a loopback address"),
        ("0x7f000001", "0x7f000001 (127.0.0.1)", "a loopback address"),
        ("0x7f.1", "0x7f.1 (127.0.0.1)", "a loopback address"),
        ("0177.0.0.1", "0177.0.0.1 (127.0.0.1)", "a loopback address"),  # octal
        ("127.1", "127.1 (127.0.0.1)", "a loopback address"),
        ("127.0.0.1.", "127.0.0.1", "a loopback address"),
        ("0", "0 (0.0.0.0)", "a 'this network' address"),
        ("169.254.169.254", "169.254.169.254", "a link-local address"),
        ("0xa9.0xfe.0xa9.0xfe", "0xa9.0xfe.0xa9.0xfe (169.254.169.254)", "a link-local address"),
        ("10.1", "10.1 (10.0.0.1)", "a private address"),
        ("[::1]", "::1", "a loopback address"),
        ("[::]", "::", "an unspecified address"),
        ("[::ffff:127.0.0.1]", "::ffff:127.0.0.1 (::ffff:7f00:1)", MAPPED),
        ("[::ffff:7f00:1]", "::ffff:7f00:1", MAPPED),
        ("[0:0:0:0:0:ffff:127.0.0.1]", "0:0:0:0:0:ffff:127.0.0.1 (::ffff:7f00:1)", MAPPED),
        ("[::ffff:a9fe:a9fe]", "::ffff:a9fe:a9fe", "a link-local address inside an IPv6 address"),
        ("[64:ff9b::7f00:1]", "64:ff9b::7f00:1", MAPPED),
        ("[fe80::1%25eth0]", "fe80::1%25eth0", "a link-local address"),
        ("[FD00::1]", "fd00::1", "a unique local (private) address"),
    ],
)
def test_check_url_names_the_refused_literal_in_every_spelling(
    host: str, shown: str, kind: str
) -> None:
    assert refused_url(f"http://{host}:8080/hook") == (
        f"webhook_url points to {shown}, {kind}, which this service does not reach"
    )


@pytest.mark.parametrize("authority", ["%5B::1%5D", "%5b::1%5d:8080"])
def test_check_url_explains_percent_encoded_ipv6_brackets(authority: str) -> None:
    assert refused_url(f"http://{authority}/hook") == (
        f"webhook_url writes the brackets of its IPv6 host percent-encoded ({authority!r}), "
        "which no URL parser reads as an address; write them plainly, as in http://[::1]/"
    )


@pytest.mark.parametrize("host", ["134744072", "0x8.0x8.0x8.0x8", "8.8.2056", "010.8.8.8"])
def test_check_url_refuses_public_ipv4_in_legacy_spellings(host: str) -> None:
    # They mean public addresses, but aiohttp would refuse them anyway; say so up front.
    assert refused_url(f"http://{host}/") == (
        "webhook_url must write an IPv4 address as four decimal numbers"
    )


def test_check_url_lets_a_policy_allow_private_literals() -> None:
    assert check_url("http://127.0.0.1:8080/", LOOPBACK, what="audio_url") == "127.0.0.1"
    allow_all = OutboundPolicy(allow_private=True)
    assert check_url("http://[fd00::1]/", allow_all, what="audio_url") == "fd00::1"
    # Outside the allowed networks, still refused.
    assert refused_url("http://127.0.0.2/", ONLY_127_0_0_1) == (
        "webhook_url points to 127.0.0.2, a loopback address, which this service does not reach"
    )
    # Allowed or not, a legacy spelling never reaches aiohttp.
    assert refused_url("http://2130706433/", allow_all) == (
        "webhook_url must write an IPv4 address as four decimal numbers"
    )


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("example.com", None),
        ("cafe", None),
        ("1e100.net", None),
        ("2130706433", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("::ffff:127.0.0.1", "::ffff:7f00:1"),
    ],
)
def test_literal_address_tells_names_from_addresses(host: str, address: str | None) -> None:
    found = literal_address(host)
    assert (None if found is None else str(found)) == address


# --- GuardedResolver ---------------------------------------------------------------------------


class FakeDNS(AbstractResolver):
    """Answers from a table, as an attacker's DNS server would; connects nowhere."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.closed = False

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in self.answers[host]
        ]

    async def close(self) -> None:
        self.closed = True


def resolve(
    policy: OutboundPolicy,
    host: str,
    *,
    dns: AbstractResolver | None = None,
    family: socket.AddressFamily = socket.AF_UNSPEC,
) -> list[ResolveResult]:
    async def scenario() -> list[ResolveResult]:
        resolver = GuardedResolver(policy, dns)
        try:
            return await resolver.resolve(host, 443, family)
        finally:
            await resolver.close()

    return asyncio.run(scenario())


def test_resolver_refuses_a_name_for_loopback() -> None:
    with pytest.raises(OutboundError) as caught:
        resolve(DEFAULT_POLICY, "localhost")
    assert caught.value.reason == LOCALHOST


def test_resolver_allows_loopback_when_the_policy_does() -> None:
    assert "127.0.0.1" in {
        found["host"] for found in resolve(OutboundPolicy(allow_private=True), "localhost")
    }
    # IPv4 only: where the host has IPv6, localhost is ::1 too, which 127.0.0.0/8 does not allow.
    allowed = OutboundPolicy(allowed_networks=("127.0.0.0/8",))
    found = resolve(allowed, "localhost", family=socket.AF_INET)
    assert {entry["host"] for entry in found} == {"127.0.0.1"}
    assert {entry["port"] for entry in found} == {443}


def test_resolver_refuses_a_name_with_one_private_address_among_public_ones() -> None:
    dns = FakeDNS({"mixed.example": ["93.184.216.34", "169.254.169.254", "1.1.1.1"]})
    with pytest.raises(OutboundError):
        resolve(DEFAULT_POLICY, "mixed.example", dns=dns)
    dns = FakeDNS({"mapped.example": ["2606:4700:4700::1111", "::ffff:10.0.0.1"]})
    with pytest.raises(OutboundError):
        resolve(DEFAULT_POLICY, "mapped.example", dns=dns)


def test_resolver_returns_exactly_the_public_addresses_it_checked() -> None:
    dns = FakeDNS({"cdn.example": ["93.184.216.34", "2606:4700:4700::1111"]})
    found = resolve(DEFAULT_POLICY, "cdn.example", dns=dns)
    assert [entry["host"] for entry in found] == ["93.184.216.34", "2606:4700:4700::1111"]
    assert dns.closed


# --- counting listeners --------------------------------------------------------------------------


@dataclass
class Listener:
    """A raw TCP server on loopback answering each request with one canned HTTP response."""

    host: str
    port: int
    connections: int = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@asynccontextmanager
async def listening(
    host: str = "127.0.0.1", *, location: str | None = None
) -> AsyncIterator[Listener]:
    """Serve on a free port of `host`: 200 with BODY, or a 302 to `location`. Counts every
    accepted connection, whether or not a request arrives on it."""
    listener = Listener(host, 0)
    if location is None:
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(BODY)}\r\n"
        response = head.encode() + b"Connection: close\r\n\r\n" + BODY
    else:
        response = (
            f"HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n"
            "Connection: close\r\n\r\n"
        ).encode()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        listener.connections += 1
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(response)
            await writer.drain()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    server = await asyncio.start_server(answer, host, 0)
    listener.port = server.sockets[0].getsockname()[1]
    try:
        yield listener
    finally:
        server.close()
        await server.wait_closed()


# --- guarded_session on its own ------------------------------------------------------------------


async def get_status(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url, allow_redirects=False) as response:
        await response.read()
        return response.status


def test_guarded_session_refuses_loopback_without_check_url() -> None:
    async def scenario() -> tuple[list[str], int]:
        reasons = []
        async with listening() as listener, guarded_session(DEFAULT_POLICY) as session:
            # Literal hosts are refused by the socket factory, names by the resolver.
            for url in (listener.url, f"http://localhost:{listener.port}"):
                with pytest.raises(aiohttp.ClientConnectorError) as caught:
                    await get_status(session, url)
                found = refusal(caught.value)
                assert found is not None
                reasons.append(found.reason)
            return reasons, listener.connections

    assert asyncio.run(scenario()) == ([LOOPBACK_V4, LOCALHOST], 0)


def test_guarded_session_connects_where_the_policy_allows() -> None:
    async def scenario() -> tuple[int, int]:
        async with listening() as listener, guarded_session(LOOPBACK) as session:
            return await get_status(session, listener.url), listener.connections

    assert asyncio.run(scenario()) == (200, 1)


def test_guarded_session_refuses_a_port_the_policy_does_not_allow() -> None:
    async def scenario() -> tuple[str, int]:
        async with listening() as listener:
            policy = OutboundPolicy(allow_private=True, allowed_ports=(listener.port + 1,))
            async with guarded_session(policy) as session:
                with pytest.raises(aiohttp.ClientConnectorError) as caught:
                    await get_status(session, listener.url)
            found = refusal(caught.value)
            assert found is not None
            return found.reason, listener.connections

    reason, connections = asyncio.run(scenario())
    assert reason.startswith("uses port ")
    assert connections == 0


def test_guarded_session_ignores_proxies_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def scenario() -> tuple[int, int, int]:
        async with listening() as proxy, listening() as target:
            monkeypatch.setenv("HTTP_PROXY", proxy.url)
            monkeypatch.setenv("http_proxy", proxy.url)
            monkeypatch.delenv("NO_PROXY", raising=False)
            monkeypatch.delenv("no_proxy", raising=False)
            async with guarded_session(LOOPBACK) as session:
                status = await get_status(session, target.url)
            return status, target.connections, proxy.connections

    assert asyncio.run(scenario()) == (200, 1, 0)


def test_socket_factory_refuses_before_creating_a_socket() -> None:
    open_socket = guarded_socket_factory(DEFAULT_POLICY)
    with pytest.raises(OutboundError):
        open_socket((socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", 80)))
    with open_socket((socket.AF_INET, socket.SOCK_STREAM, 6, "", ("8.8.8.8", 80))) as opened:
        assert opened.family == socket.AF_INET


# --- fetch_audio, end to end ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("127.0.0.1", LOOPBACK_V4),
        ("localhost", LOCALHOST),
        ("2130706433", LOOPBACK_V4.replace("127.0.0.1", "2130706433 (127.0.0.1)")),
        ("[::ffff:127.0.0.1]", f"points to ::ffff:127.0.0.1 (::ffff:7f00:1), {MAPPED}, which"),
        ("0x7f.1", LOOPBACK_V4.replace("127.0.0.1", "0x7f.1 (127.0.0.1)")),
        ("127.1", LOOPBACK_V4.replace("127.0.0.1", "127.1 (127.0.0.1)")),
    ],
)
def test_fetch_audio_never_connects_to_loopback_by_default(
    host: str, reason: str, tmp_path: Path
) -> None:
    dest = tmp_path / "a.wav"

    async def scenario() -> tuple[str, int]:
        async with listening() as listener:
            with pytest.raises(FetchError) as caught:
                await fetch_audio(f"http://{host}:{listener.port}/song.wav", dest)
            return str(caught.value), listener.connections

    message, connections = asyncio.run(scenario())
    assert connections == 0
    assert message.startswith(f"audio_url {reason}"), message
    assert not dest.exists()


def test_fetch_audio_connects_to_an_allowed_network(tmp_path: Path) -> None:
    dest = tmp_path / "a.wav"

    async def scenario() -> tuple[int, int]:
        async with listening() as listener:
            written = await fetch_audio(f"{listener.url}/song.wav", dest, policy=ONLY_127_0_0_1)
            return written, listener.connections

    assert asyncio.run(scenario()) == (len(BODY), 1)
    assert dest.read_bytes() == BODY


def test_fetch_audio_refuses_a_redirect_to_a_refused_address(tmp_path: Path) -> None:
    dest = tmp_path / "a.wav"

    async def scenario() -> tuple[str, int, int]:
        # 127.0.0.2 is loopback too, but outside the one network this policy allows.
        async with (
            listening("127.0.0.2") as inside,
            listening(location=f"{inside.url}/song.wav") as allowed,
        ):
            with pytest.raises(FetchError) as caught:
                await fetch_audio(f"{allowed.url}/song.wav", dest, policy=ONLY_127_0_0_1)
            return str(caught.value), allowed.connections, inside.connections

    message, allowed_connections, inside_connections = asyncio.run(scenario())
    assert message == (
        "a redirect from audio_url points to 127.0.0.2, a loopback address, "
        "which this service does not reach"
    )
    assert (allowed_connections, inside_connections) == (1, 0)
    assert not dest.exists()


def test_fetch_audio_refuses_a_redirect_to_a_port_not_allowed(tmp_path: Path) -> None:
    dest = tmp_path / "a.wav"

    async def scenario() -> tuple[str, int, Listener, Listener]:
        async with listening() as other, listening(location=f"{other.url}/song.wav") as first:
            policy = OutboundPolicy(allowed_networks=("127.0.0.1/32",), allowed_ports=(first.port,))
            with pytest.raises(FetchError) as caught:
                await fetch_audio(f"{first.url}/song.wav", dest, policy=policy)
            return str(caught.value), other.port, first, other

    message, port, first, other = asyncio.run(scenario())
    assert message == (
        f"a redirect from audio_url uses port {port}, which this service does not connect to"
    )
    assert (first.connections, other.connections) == (1, 0)


def test_fetch_audio_checks_every_hop_by_name_through_the_resolver(tmp_path: Path) -> None:
    # Stand-in DNS maps two names onto loopback; the policy allows only 127.0.0.1, so the
    # redirect to the name for 127.0.0.2 must be refused when resolved. The connector has no
    # guarded socket factory, so the resolver alone stands between the hop and a connection.
    dest = tmp_path / "a.wav"

    async def scenario() -> tuple[str, int, int]:
        async with listening("127.0.0.2") as inside:
            hop = f"http://internal.example:{inside.port}/song.wav"
            async with listening(location=hop) as allowed:
                dns = FakeDNS({"audio.example": ["127.0.0.1"], "internal.example": ["127.0.0.2"]})
                connector = aiohttp.TCPConnector(
                    resolver=GuardedResolver(ONLY_127_0_0_1, dns),
                    use_dns_cache=False,
                )
                async with aiohttp.ClientSession(connector=connector) as session:
                    with pytest.raises(FetchError) as caught:
                        await fetch_audio(
                            f"http://audio.example:{allowed.port}/song.wav",
                            dest,
                            session=session,
                            policy=ONLY_127_0_0_1,
                        )
                return str(caught.value), allowed.connections, inside.connections

    message, allowed_connections, inside_connections = asyncio.run(scenario())
    assert message == (
        "a redirect from audio_url points to internal.example, a name for a loopback address, "
        "which this service does not reach"
    )
    assert (allowed_connections, inside_connections) == (1, 0)


# --- webhook attempts, end to end ----------------------------------------------------------------


def delivery(url: str) -> Delivery:
    return Delivery(
        delivery_id="dlv_1",
        task_id="t1",
        url=url,
        payload='{"task_id": "t1"}',
        state=DeliveryState.PENDING,
        next_attempt_at=NOW,
    )


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("127.0.0.1", LOOPBACK_V4),
        ("localhost", LOCALHOST),
        ("[::ffff:127.0.0.1]", f"points to ::ffff:7f00:1, {MAPPED}, which"),
    ],
)
def test_webhook_to_loopback_fails_without_a_connection(host: str, reason: str) -> None:
    secret = new_secret()

    async def scenario() -> tuple[str, str, bool, int]:
        async with listening() as listener, webhook_session(DEFAULT_POLICY) as session:
            result, retry, _ = await attempt(
                session,
                delivery(f"http://{host}:{listener.port}/hook"),
                secret,
                RetrySchedule(timeout_s=5),
                number=1,
                now=lambda: NOW,
            )
            assert result.status_code is None
            return result.outcome, result.error, retry, listener.connections

    outcome, error, retry, connections = asyncio.run(scenario())
    assert (outcome, retry, connections) == ("failed", False, 0)
    assert error.startswith(f"webhook_url {reason}"), error
    assert secret not in error


def test_webhook_to_an_allowed_network_is_delivered() -> None:
    async def scenario() -> tuple[str, int]:
        async with listening() as listener, webhook_session(LOOPBACK) as session:
            result, _, _ = await attempt(
                session,
                delivery(f"{listener.url}/hook"),
                new_secret(),
                RetrySchedule(timeout_s=5),
                number=1,
                now=lambda: NOW,
            )
            return result.outcome, listener.connections

    assert asyncio.run(scenario()) == ("delivered", 1)
