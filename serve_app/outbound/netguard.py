"""Where the service may connect when a stranger names the URL (`audio_url`, `webhook_url`).

Without a guard such a URL could make the service reach its own loopback, the private
network or the cloud metadata endpoint (server-side request forgery). `check_url` refuses a
bad URL up front; `guarded_session` builds the aiohttp session that enforces the same
`OutboundPolicy` on what actually happens: its resolver checks every address a name
resolves to and hands aiohttp exactly those (no second lookup, so DNS rebinding cannot swap
them), and its socket factory checks the address of every socket it opens, which also
covers literal IP hosts, since aiohttp never passes those to a resolver.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from functools import cached_property
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohappyeyeballs import AddrInfoType, SocketFactoryType
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

IPAddress = IPv4Address | IPv6Address

MAX_URL_LENGTH = 2048

_SCHEMES = frozenset({"http", "https"})
_DEFAULT_PORTS = {"http": 80, "https": 443}

# Ranges the ipaddress properties miss or fold into a vaguer one. Shared address space has no
# property at all; the rest are in is_private or is_reserved, but under the wrong name, and
# whether they are differs between Python patch releases (3.11.10 rewrote the lists), so they
# are named here and the properties in `_property_reason` only catch what is left.
_V4_RANGES: tuple[tuple[IPv4Network | IPv6Network, str], ...] = (
    (IPv4Network("0.0.0.0/8"), "a 'this network' address"),
    (IPv4Network("100.64.0.0/10"), "a carrier-grade NAT address"),
    (IPv4Network("192.0.0.0/24"), "an IETF protocol address"),
    (IPv4Network("192.0.2.0/24"), "a documentation address"),
    (IPv4Network("192.88.99.0/24"), "a 6to4 relay anycast address"),
    (IPv4Network("198.18.0.0/15"), "a benchmarking address"),
    (IPv4Network("198.51.100.0/24"), "a documentation address"),
    (IPv4Network("203.0.113.0/24"), "a documentation address"),
    (IPv4Network("255.255.255.255/32"), "a broadcast address"),
)
_V6_RANGES: tuple[tuple[IPv4Network | IPv6Network, str], ...] = (
    # Local-use NAT64 (RFC 8215) translates to whatever v4 network the local gateway serves.
    (IPv6Network("64:ff9b:1::/48"), "a local-use NAT64 address"),
    (IPv6Network("100::/64"), "a discard-only address"),
    # Teredo hides the client's IPv4 address behind a relay; no need to reach one.
    (IPv6Network("2001::/32"), "a Teredo tunnel address"),
    (IPv6Network("2001:2::/48"), "a benchmarking address"),
    (IPv6Network("2001:db8::/32"), "a documentation address"),
    (IPv6Network("3fff::/20"), "a documentation address"),
    (IPv6Network("fc00::/7"), "a unique local (private) address"),
)
# The well-known NAT64 prefix (RFC 6052): the low 32 bits are the IPv4 address reached.
_NAT64 = IPv6Network("64:ff9b::/96")


class OutboundError(OSError):
    """A URL or address this service does not connect to. `reason` completes a sentence whose
    subject is the URL; str() is that sentence with `what` ("audio_url") as its subject.

    An OSError so that aiohttp, when the resolver or the socket factory raises it, keeps it as
    the `os_error` of its connection error instead of dropping it; `refusal` finds it there.
    """

    def __init__(self, reason: str, what: str = "the URL") -> None:
        message = f"{what} {reason}"
        super().__init__(message)
        # aiohttp quotes strerror when it wraps the error; errno stays None, so str() is unchanged.
        self.strerror = message
        self.reason = reason
        self.what = what

    def __reduce__(self) -> tuple[type[OutboundError], tuple[str, str]]:
        # OSError pickles its args, which here are the composed message, not (reason, what).
        return type(self), (self.reason, self.what)


@dataclass(frozen=True)
class OutboundPolicy:
    """Which targets a guarded session may connect to.

    allow_private: no address is refused (a local profile whose inputs are trusted, tests).
    allowed_networks: CIDRs allowed even if private, e.g. ("127.0.0.1/32",).
    allowed_ports: the only ports allowed; empty allows any.
    """

    allow_private: bool = False
    allowed_networks: tuple[str, ...] = ()
    allowed_ports: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        bad_ports = [port for port in self.allowed_ports if not 0 < port < 65536]
        if bad_ports:
            raise ValueError(f"allowed_ports must be between 1 and 65535, got {bad_ports}")
        # Parsed now so that a typo fails at start-up, not on the first download.
        _ = self._networks

    @cached_property
    def _networks(self) -> tuple[IPv4Network | IPv6Network, ...]:
        try:
            return tuple(ipaddress.ip_network(cidr) for cidr in self.allowed_networks)
        except ValueError as exc:
            raise ValueError(
                f"allowed_networks must be CIDRs such as '10.0.0.0/8': {exc}"
            ) from None

    def permits_address(self, address: IPAddress) -> bool:
        """Whether a connection to `address` is allowed."""
        if self.allow_private or refused_reason(address) is None:
            return True
        # An IPv4-mapped address reaches the IPv4 one, so a network allowing that allows it.
        mapped = address.ipv4_mapped if isinstance(address, IPv6Address) else None
        return any(
            candidate in network
            for candidate in (address, mapped)
            if candidate is not None
            for network in self._networks
        )

    def permits_port(self, port: int) -> bool:
        """Whether a connection to `port` is allowed."""
        return not self.allowed_ports or port in self.allowed_ports


# One shared instance for argument defaults; the policy is immutable.
DEFAULT_POLICY = OutboundPolicy()


def refused_reason(address: IPAddress) -> str | None:
    """Why `address` is never a public target ("a loopback address"), or None if it may be one."""
    if isinstance(address, IPv6Address):
        embedded = _embedded_v4(address)
        if embedded is not None:
            reason = _refused_v4(embedded)
            return None if reason is None else f"{reason} inside an IPv6 address"
        return _range_reason(address, _V6_RANGES) or _property_reason(address)
    return _refused_v4(address)


def refused_address(address: IPAddress, written: str | None = None) -> str:
    """The reason a URL whose host is the refused `address` is refused, naming the address and
    what kind it is: "points to ::1, a loopback address, which this service does not reach".
    `written`: the host as the URL spells it, shown beside the address when it differs."""
    shown = str(address)
    if written is not None and written.strip("[]").removesuffix(".").lower() != shown:
        shown = f"{written} ({address})"
    return f"points to {shown}, {_kind(address)}, which this service does not reach"


def refused_name(host: str, address: IPAddress) -> str:
    """The reason a URL whose host name resolves to the refused `address` is refused. The
    address itself stays out: naming what an internal name resolves to would tell a caller
    about the service's network."""
    return f"points to {host}, a name for {_kind(address)}, which this service does not reach"


def _kind(address: IPAddress) -> str:
    # Only an address an allowed network does not cover is refused, so it has a reason.
    return refused_reason(address) or "an address this service's policy refuses"


def _refused_v4(address: IPv4Address) -> str | None:
    return _range_reason(address, _V4_RANGES) or _property_reason(address)


def _embedded_v4(address: IPv6Address) -> IPv4Address | None:
    """The IPv4 address an IPv6 one carries to: IPv4-mapped, NAT64 or 6to4 (RFC 3056), or
    IPv4-compatible (::a.b.c.d, deprecated but still parsed), else None."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    # :: and ::1 are the unspecified and loopback addresses, not IPv4-compatible ones.
    if address in _NAT64 or 1 < int(address) < 2**32:
        return IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _range_reason(
    address: IPAddress, ranges: tuple[tuple[IPv4Network | IPv6Network, str], ...]
) -> str | None:
    return next((reason for network, reason in ranges if address in network), None)


def _property_reason(address: IPAddress) -> str | None:
    # From the properties: loopback (127/8, ::1), unspecified, link-local (169.254/16 with the
    # cloud metadata address, fe80::/10), multicast, site-local (fec0::/10, IPv6 only),
    # reserved (240/4, unallocated IPv6), private (RFC 1918). The last test catches whatever
    # else the running Python considers not globally reachable.
    checks = (
        (address.is_loopback, "a loopback address"),
        (address.is_unspecified, "an unspecified address"),
        (address.is_link_local, "a link-local address"),
        (address.is_multicast, "a multicast address"),
        (isinstance(address, IPv6Address) and address.is_site_local, "a site-local address"),
        (address.is_reserved, "a reserved address"),
        (address.is_private, "a private address"),
        (not address.is_global, "an address that is not globally reachable"),
    )
    return next((reason for refused, reason in checks if refused), None)


def url_problem(url: str) -> str | None:
    """Say what is wrong with `url` as an http(s) target (e.g. "must name a host"), or None."""
    if len(url) > MAX_URL_LENGTH:
        return f"is longer than {MAX_URL_LENGTH} characters"
    if any(ord(char) <= 0x20 or ord(char) == 0x7F for char in url):
        return "contains spaces or control characters"
    try:
        parts = urlsplit(url)
    except ValueError:
        return "is not a valid URL"
    authority = parts.netloc.rpartition("@")[2]
    if "%5b" in authority.lower():
        # What a server sends when it echoes a percent-encoded query back as its Location:
        # neither RFC 3986 nor browsers read "%5B::1%5D" as the address [::1].
        return (
            f"writes the brackets of its IPv6 host percent-encoded ({authority[:80]!r}), which "
            "no URL parser reads as an address; write them plainly, as in http://[::1]/"
        )
    try:
        port = parts.port
    except ValueError:
        return "is not a valid URL"
    if not parts.scheme:
        return "must start with http:// or https://"
    if parts.scheme.lower() not in _SCHEMES:
        return f"must use http or https, not {parts.scheme[:20]!r}"
    if "@" in parts.netloc:
        return "must not contain a user name or password"
    if not parts.hostname:
        return "must name a host"
    if port == 0:
        return "must not use port 0"
    return None


def check_url(url: str, policy: OutboundPolicy, *, what: str) -> str:
    """Refuse a URL this service must not connect to, raising OutboundError whose message names
    `what`; return its host (a literal IP in canonical form). A host name's addresses are
    checked later, by the guarded session's resolver."""
    problem = url_problem(url)
    if problem is not None:
        raise OutboundError(problem, what)
    parts = urlsplit(url)
    port = parts.port or _DEFAULT_PORTS[parts.scheme.lower()]
    if not policy.permits_port(port):
        raise OutboundError(f"uses port {port}, which this service does not connect to", what)
    host = parts.hostname
    assert host is not None  # url_problem refuses a URL without one
    address = literal_address(host)
    if address is None:
        return host
    if not policy.permits_address(address):
        raise OutboundError(refused_address(address, host), what)
    if isinstance(address, IPv4Address) and str(address) != host.removesuffix("."):
        # aiohttp refuses these forms itself; saying so here gives the caller a reason.
        raise OutboundError("must write an IPv4 address as four decimal numbers", what)
    return str(address)


def literal_address(host: str) -> IPAddress | None:
    """The address a host written as an IP means, or None for a name. IPv4 includes the legacy
    forms inet_aton and browsers accept (2130706433, 0x7f.1, 0177.0.0.1, 127.1)."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        # One trailing dot marks a fully qualified name; resolvers accept "127.0.0.1." too.
        return IPv4Address(socket.inet_aton(host.removesuffix(".")))
    except OSError:
        return None


def refusal(exc: BaseException) -> OutboundError | None:
    """The OutboundError behind `exc`: itself, or the cause aiohttp wrapped in a connection
    error when the guarded resolver or socket factory refused; None if it is no refusal."""
    if isinstance(exc, OutboundError):
        return exc
    if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(exc.os_error, OutboundError):
        return exc.os_error
    return None


class GuardedResolver(AbstractResolver):
    """A resolver that refuses a name if any of its addresses is refused by the policy, and
    otherwise returns exactly the addresses it checked, for aiohttp to connect to. It wraps
    `resolver`, by default aiohttp's ThreadedResolver (the system's getaddrinfo)."""

    def __init__(self, policy: OutboundPolicy, resolver: AbstractResolver | None = None) -> None:
        self._policy = policy
        self._resolver = ThreadedResolver() if resolver is None else resolver

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Resolve `host`; OutboundError if any address it has is refused."""
        results = await self._resolver.resolve(host, port, family)
        # One refused address refuses the name: an attacker's DNS can list a public address
        # beside a private one and let the connection attempts pick.
        for result in results:
            address = ipaddress.ip_address(result["host"])
            if not self._policy.permits_address(address):
                raise OutboundError(refused_name(host, address))
        return results

    async def close(self) -> None:
        """Release the wrapped resolver."""
        await self._resolver.close()


def guarded_socket_factory(policy: OutboundPolicy) -> SocketFactoryType:
    """A TCPConnector socket factory that refuses, before creating the socket, any address or
    port the policy does not permit."""

    def open_socket(addr_info: AddrInfoType) -> socket.socket:
        family, kind, proto, _, sockaddr = addr_info
        address = ipaddress.ip_address(sockaddr[0])
        if not policy.permits_address(address):
            raise OutboundError(refused_address(address))
        if not policy.permits_port(sockaddr[1]):
            raise OutboundError(f"uses port {sockaddr[1]}, which this service does not connect to")
        return socket.socket(family=family, type=kind, proto=proto)

    return open_socket


def guarded_session(
    policy: OutboundPolicy, *, limit: int = 100, **session_kwargs: Any
) -> aiohttp.ClientSession:
    """A ClientSession that connects only where `policy` allows, at most `limit` connections at
    once (0: no limit), and never through a proxy named by the environment. Create it inside
    the running event loop; other keyword arguments (e.g. cookie_jar) go to ClientSession."""
    connector = aiohttp.TCPConnector(
        resolver=GuardedResolver(policy),
        # A cached answer would skip the check on the next request.
        use_dns_cache=False,
        socket_factory=guarded_socket_factory(policy),
        limit=limit,
    )
    return aiohttp.ClientSession(connector=connector, trust_env=False, **session_kwargs)
