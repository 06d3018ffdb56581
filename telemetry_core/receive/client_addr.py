"""Built-in plugin: the client address spooled with a submission (opt-in).

Off by default (``receive.record_client_addr: false``): nothing about the
client is stored.  When on, ``telemetry_receive_enrich`` sets
``submission.client_addr`` to

* the socket peer's address, unless the peer is one of
  ``receive.trusted_proxies`` (addresses or CIDR networks);
* for a trusted peer, the right-most address of ``X-Forwarded-For`` that is
  not itself a trusted proxy (every proxy appends the address it saw, so the
  right-most untrusted hop is the first one nobody can have forged).  A
  header that is missing or not a list of IP addresses leaves the peer's
  address (counted under ``/receive_client_addr/bad_forwarded_for``).

The plugin is an instance (:class:`ClientAddresses`, registered as
``receive.client_addr``): each engine has its own policy, built in
``telemetry_configure``.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Iterable

from ..hookspecs import hookimpl
from ..metrics.stats import counter_stats
from ..records import Submission

__all__ = ["ClientAddressPolicy", "ClientAddresses"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ClientAddressPolicy:
    """Decides which address to record for a request (see the module docstring)."""

    def __init__(self, enabled: bool = False, trusted_proxies: Iterable[str] = ()) -> None:
        self.enabled = enabled
        self.trusted: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(p, strict=False) for p in trusted_proxies)
        self.stats = counter_stats("/receive_client_addr", "bad_forwarded_for")

    def is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.trusted)

    def client_addr(self, peer: str | None, forwarded_for: str | None) -> str | None:
        """The address to record, or ``None`` when recording is off or nothing is known."""
        if not self.enabled:
            return None
        if peer is None or not self.trusted or not self.is_trusted(peer):
            return peer
        if not forwarded_for:
            return peer
        hops = [hop.strip() for hop in forwarded_for.split(",")]
        try:
            addresses = [str(ipaddress.ip_address(hop)) for hop in hops]
        except ValueError:
            self.stats.bad_forwarded_for += 1
            return peer
        for address in reversed(addresses):
            if not self.is_trusted(address):
                return address
        return addresses[0]


class ClientAddresses:
    """The built-in ``receive.client_addr`` plugin: one policy per engine."""

    def __init__(self) -> None:
        self.policy = ClientAddressPolicy()

    @hookimpl
    def telemetry_configure(self, config: Any) -> None:
        self.policy = ClientAddressPolicy(bool(config.get("receive.record_client_addr", False)),
                                          config.get("receive.trusted_proxies") or ())

    @hookimpl
    def telemetry_receive_enrich(self, submission: Submission) -> None:
        if self.policy.enabled and submission.client_addr is None:
            submission.client_addr = self.policy.client_addr(submission.peer,
                                                             submission.headers.get("X-Forwarded-For"))
