"""SSRF safety for customer-supplied URLs: what may be registered, and what may be connected to.

Address classes (IPv4-mapped, 6to4, Teredo and NAT64 IPv6 addresses are judged by the IPv4 address they carry):

* **always refused** — link-local (``169.254.0.0/16``, ``fe80::/10``: every cloud's metadata service lives
  there), the metadata addresses outside it (``fd00:ec2::254`` AWS IPv6, ``100.100.100.200`` Alibaba), unspecified,
  multicast and reserved addresses;
* **private** — loopback, RFC 1918, unique-local ``fc00::/7``, carrier-grade NAT and every other non-global range:
  refused unless ``OUTBOUND_WEBHOOKS_ALLOW_PRIVATE=true`` (development);
* **public** — everything else.

Two checks: :func:`check_url` when an endpoint is registered or changed (scheme — ``https`` outside
development/test —, no credentials in the URL, and the host's current addresses), and at every new connection
(:class:`GuardedResolver`, plus :func:`check_target` for IP-literal hosts): the host is resolved, the connection
refused if ANY address is not allowed, and aiohttp's connector connects to the very addresses that were checked
(TLS still verifies the certificate against the host name), so a DNS answer that changes between the check and
the connection (rebinding) gains nothing.  The HTTP client (:func:`client_session`) reads no proxy settings from
the environment and never follows redirects.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

import aiohttp
import certifi
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from robosystems.config import Settings
from robosystems.errors import Unprocessable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Verdict = Literal["public", "private", "forbidden"]

ALWAYS_REFUSED = tuple(
    ipaddress.ip_network(n)
    for n in (
        "169.254.0.0/16",  # IPv4 link-local: 169.254.169.254 is AWS/GCP/Azure/OpenStack metadata
        "fe80::/10",  # IPv6 link-local
        "fd00:ec2::254/128",  # AWS metadata over IPv6 (inside the unique-local range, so listed on its own)
        "100.100.100.200/32",  # Alibaba Cloud metadata (inside carrier-grade NAT space)
        "0.0.0.0/8",
        "::/128",
    )
)
NAT64 = ipaddress.ip_network("64:ff9b::/96")
MAX_URL_LENGTH = 2048


class UrlRefused(Unprocessable):
    status_code, code, detail = 422, "webhook_url_invalid", "This webhook URL can't be used"


class AddressRefused(UrlRefused):
    """The URL's host is (or resolves to) an address outside the policy."""


def _carried_ipv4(ip: IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv6Address):
        teredo = ip.teredo
        for embedded in (ip.ipv4_mapped, ip.sixtofour, teredo[1] if teredo else None):
            if embedded is not None:
                return embedded
        if ip in NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def classify(ip: IPAddress) -> Verdict:
    ip = _carried_ipv4(ip)
    if (
        any(ip.version == net.version and ip in net for net in ALWAYS_REFUSED)
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_unspecified
    ):
        return "forbidden"
    if ip.is_loopback:
        return "private"
    if ip.is_global:
        return "public"
    if ip.is_reserved:
        return "forbidden"
    return "private"


@dataclass(frozen=True)
class Policy:
    allow_private: bool
    allow_http: bool
    resolve_timeout: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(
            allow_private=settings.outbound_webhooks_allow_private,
            allow_http=settings.environment in ("development", "test"),
            resolve_timeout=settings.outbound_webhooks_connect_timeout_seconds,
        )

    def check_address(self, ip: IPAddress) -> None:
        verdict = classify(ip)
        if verdict == "forbidden":
            raise AddressRefused(
                "Webhook URLs may not point at link-local, cloud metadata or reserved addresses",
                code="webhook_url_forbidden",
            )
        if verdict == "private" and not self.allow_private:
            raise AddressRefused(
                "Webhook URLs may not point at private or loopback addresses", code="webhook_url_private"
            )

    def check_addresses(self, addresses: Iterable[IPAddress]) -> None:
        for ip in addresses:
            self.check_address(ip)


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


async def resolve(host: str, port: int, within: float) -> list[IPAddress]:
    """Every address ``host`` resolves to now (an IP literal is itself); raises ``OSError``/``TimeoutError``."""
    literal = _ip_literal(host)
    if literal is not None:
        return [literal]
    loop = asyncio.get_running_loop()
    infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), within)
    found: list[IPAddress] = []
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]))
        if ip not in found:
            found.append(ip)
    if not found:
        raise OSError(f"{host} has no address")
    return found


@dataclass(frozen=True)
class Target:
    url: str
    scheme: str
    host: str
    port: int


def parse_url(url: str, policy: Policy) -> Target:
    """Syntax and scheme rules of a webhook URL (no network)."""
    if len(url) > MAX_URL_LENGTH or any(c.isspace() for c in url):
        raise UrlRefused("The URL is too long or contains whitespace")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UrlRefused("The URL is not valid") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise UrlRefused("Webhook URLs must use https")
    if scheme == "http" and not policy.allow_http:
        raise UrlRefused("Webhook URLs must use https", code="webhook_url_insecure")
    if parts.username is not None or parts.password is not None:
        raise UrlRefused("Webhook URLs may not carry credentials; verify the signature instead")
    if parts.fragment:
        raise UrlRefused("Webhook URLs may not have a fragment")
    host = parts.hostname or ""
    if not host:
        raise UrlRefused("The URL has no host")
    if _ip_literal(host) is None:
        try:
            host.encode("idna").decode("ascii")
        except UnicodeError:
            raise UrlRefused("The URL's host name is not valid") from None
    return Target(url, scheme, host, port or (443 if scheme == "https" else 80))


async def check_url(url: str, policy: Policy) -> str:
    """Refuse a URL outside the policy (422 with a stable code).  A host name that does not resolve right now is
    accepted: every connection checks its addresses again."""
    target = parse_url(url, policy)
    try:
        addresses = await resolve(target.host, target.port, policy.resolve_timeout)
    except (OSError, TimeoutError, UnicodeError):
        return url
    policy.check_addresses(addresses)
    return url


@functools.lru_cache(maxsize=4096)
def check_target(url: str, policy: Policy) -> Target:
    """Before each attempt: the URL rules of this environment, and an IP-literal host against the policy (a name
    is checked by :class:`GuardedResolver` when the connection is made).  Pure, so remembered per (url, policy);
    a refusal is not remembered (it raises)."""
    target = parse_url(url, policy)
    literal = _ip_literal(target.host)
    if literal is not None:
        policy.check_address(literal)
    return target


class GuardedResolver(AbstractResolver):
    """aiohttp resolver: the name's addresses, refused if ANY is outside the policy.  The connector connects to the
    addresses this returns (TLS verifies the certificate for the name), never resolving again on its own."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.inner = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await asyncio.wait_for(self.inner.resolve(host, port, family), self.policy.resolve_timeout)
        self.policy.check_addresses(ipaddress.ip_address(r["host"]) for r in results)
        return results

    async def close(self) -> None:
        await self.inner.close()


def client_session(settings: Settings, max_connections: int) -> aiohttp.ClientSession:
    """The delivery client: guarded name resolution on every new connection (no DNS cache), certificate
    verification, keep-alive, no proxy from the environment (``trust_env=False``); redirects are refused per
    request."""
    connect = settings.outbound_webhooks_connect_timeout_seconds
    read = settings.outbound_webhooks_read_timeout_seconds
    connector = aiohttp.TCPConnector(
        limit=max_connections,
        limit_per_host=0,
        use_dns_cache=False,
        resolver=GuardedResolver(Policy.from_settings(settings)),
        ssl=ssl.create_default_context(cafile=certifi.where()),
        keepalive_timeout=30.0,
    )
    return aiohttp.ClientSession(
        connector=connector,
        trust_env=False,
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=connect + read, sock_connect=connect, sock_read=read),
    )
