"""Automatic VIPs for services that have no address: the same on every host, by host name.

Istio allocates an address from 240.240.0.0/16 (and 2001:2::/48) to each ServiceEntry host that
has no `addresses`, unless its resolution is NONE (the original destination is then the only
address that matters) or the host is a wildcard (pilot/pkg/serviceregistry/serviceentry,
autoAllocateIPs). The DNS proxy answers these addresses, and the outbound listener has a
filter chain for each, so they must agree on every host of the fleet: here the allocation is
a pure function of the set of host names, computed with no coordination.

Eligible: a Service with no `addresses`, resolution not NONE, a non-wildcard host, and not a
Kubernetes Service (those have their ClusterIPs; a headless one resolves to its endpoints).
Consul services are eligible: meshagent gives them a VIP of this range so that capture can
route them by address (Consul's own virtual IPs are handed out by its servers, in order).

The rule (a reader can reproduce it without this code):
- slots: 65,024 = 256 third octets x 254 fourth octets (1-254; .0 and .255 are never used).
  Slot n is 240.240.<n // 254>.<n % 254 + 1> and 2001:2::f0f0:<third><fourth> (two hex
  digits each), e.g. slot 0 is 240.240.0.1 and 2001:2::f0f0:1. (Istio writes the two octets'
  hex unpadded, so that two slots can share an IPv6 address; Istio's slots also differ
  between istiods. Only the local proxy and DNS proxy see a VIP, so matching Istio's
  numbers is not needed: the names and ranges are what applications see.)
- a host's home slot: the first 8 bytes of SHA-256 of the lower-cased host name, as a
  big-endian integer, modulo 65,024.
- collisions: linear probing, where the host whose name sorts first keeps a slot. The table
  is what you get by taking the hosts in name order, each taking the first free slot from its
  home slot on (wrapping at the end). So a host's slot depends only on the names of the
  hosts in its run of adjacent taken slots, and changes only when that run changes (with
  1,000 hosts 0.5% sit off their home slot and 3% share a run; with 10,000, 8% and 38%).

Limits: agreement needs the same set of eligible host names on every host; hosts that see
different sets can differ only for hosts in a run that differs. At most 65,024 hosts get a
VIP; when more are eligible, the ones beyond get none (which ones then depends on the order
they came in), and are reached by name through the loopback listeners only. When a VIP moves
to another host, a client still holding the old DNS answer (TTL 30 s) reaches the new holder.
"""

from __future__ import annotations

import hashlib
from dataclasses import fields

from meshagent.construct import slots_constructor
from meshagent.model.services import Resolution, Service

SLOTS = 256 * 254
V4_PREFIX = "240.240."
V6_PREFIX = "2001:2::f0f0:"

_FIELDS = tuple(f.name for f in fields(Service))
_make_service = slots_constructor(Service, *_FIELDS)


def home_slot(host: str, slots: int = SLOTS) -> int:
    """Where host's VIP goes when no other host is in the way."""
    digest = hashlib.sha256(host.lower().encode()).digest()
    return int.from_bytes(digest[:8], "big") % slots


def slot_addresses(slot: int) -> tuple[str, str]:
    """The IPv4 and IPv6 VIP of a slot (0 <= slot < SLOTS)."""
    third, fourth = divmod(slot, 254)
    fourth += 1
    return f"{V4_PREFIX}{third}.{fourth}", f"{V6_PREFIX}{(third << 8) | fourth:x}"


def wants_vip(service: Service) -> bool:
    """Whether service gets an automatic VIP (see the module docstring)."""
    if service.addresses or service.resolution is Resolution.NONE:
        return False
    if service.host.startswith("*"):
        return False
    prov = service.provenance
    return prov is None or not (prov.source == "kubernetes" and prov.kind == "Service")


def allocate(hosts: list[str], slots: int = SLOTS) -> dict[str, int]:
    """The slot of each host: the rule of the module docstring, written plainly (the
    reference that VipAllocator, which maintains the same table incrementally, is tested
    against)."""
    taken: dict[int, str] = {}
    out: dict[str, int] = {}
    for host in sorted(set(hosts)):
        if len(taken) >= slots:
            break
        slot = home_slot(host, slots)
        while slot in taken:
            slot = (slot + 1) % slots
        taken[slot] = host
        out[host] = slot
    return out


class VipAllocator:
    """The slot table of the eligible hosts, kept equal to allocate(hosts) as hosts come and go.

    Adding or removing a host can move other hosts (those in its run of taken slots): the
    caller collects them with take_moved() and gives their Services new addresses.
    Owned by the normalizer; not thread-safe.
    """

    def __init__(self, slots: int = SLOTS) -> None:
        self._slots = slots
        self._table: dict[int, str] = {}  # slot -> host
        self._where: dict[str, int] = {}  # host -> slot
        self._moved: set[str] = set()

    def slot(self, host: str) -> int | None:
        """host's slot, or None when it holds none."""
        return self._where.get(host)

    def place(self, service: Service) -> Service:
        """service with the auto_addresses its host gets now (maybe the same object)."""
        host = service.host
        slot: int | None = None
        if wants_vip(service):
            slot = self._add(host)
        else:
            self.release(host)
        auto = slot_addresses(slot) if slot is not None else ()
        if service.auto_addresses == auto:
            return service
        return _make_service(*[getattr(service, f) for f in _FIELDS[:-1]], auto)

    def release(self, host: str) -> None:
        """host no longer holds a slot; the hosts after it in its run may move back."""
        slot = self._where.pop(host, None)
        if slot is None:
            return
        del self._table[slot]
        self._moved.discard(host)
        run: list[str] = []
        probe = (slot + 1) % self._slots
        while probe in self._table and probe != slot:
            run.append(self._table.pop(probe))
            probe = (probe + 1) % self._slots
        # (Spurious entries in _moved are harmless: the caller re-places an unmoved host.)
        before = {h: self._where.pop(h) for h in run}
        for h in run:
            self._add(h)
        self._moved.update(h for h in run if self._where.get(h) != before[h])

    def take_moved(self) -> set[str]:
        """The hosts whose slot changed because of other hosts since the last call."""
        moved, self._moved = self._moved, set()
        return moved

    def _add(self, host: str) -> int | None:
        """Insert host (Amble and Knuth's ordered hashing: the smaller name keeps a slot,
        the larger probes on), which gives the table allocate() would; host's slot."""
        found = self._where.get(host)
        if found is not None or len(self._where) >= self._slots:
            return found
        key = host
        probe = home_slot(host, self._slots)
        while True:
            occupant = self._table.get(probe)
            if occupant is None or key < occupant:
                self._table[probe] = key
                self._where[key] = probe
                if occupant is None:
                    return self._where[host]
                self._moved.add(occupant)
                key = occupant  # displaced: it probes on from the next slot
            probe = (probe + 1) % self._slots
