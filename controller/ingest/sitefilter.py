"""Site address ranges (issue #11): a sensor speaks only for its own site's hosts.

Optional controller configuration: site -> list of CIDRs (IPv4 and IPv6). A
packet from a sensor whose site has ranges is kept when its innermost IP
source OR destination is inside them (a mirror at a site sees traffic to or
from its own hosts); the Recorder drops and counts the others. Transport-free
and deterministic: the answer depends on the configuration only, so a
write-ahead log replay drops exactly what the live path dropped.

The check is cheap: addresses are looked up in a small per-site cache
(bytes -> bool); a miss compares the address, as an integer shifted by each
configured prefix length, against a set of network integers.
"""
from __future__ import annotations

import ipaddress
from typing import Any, Iterable, Mapping

_CACHE_MAX = 65536      # distinct addresses remembered per site (cleared when full)


class SiteNetworksError(ValueError):
    """A malformed site_networks entry; the message is one line."""


class SiteRanges:
    """The address ranges of one site: `keeps(src, dst)` on raw 4/16-byte addresses."""

    __slots__ = ("site", "networks", "_v4", "_v6", "_cache")

    def __init__(self, site: str, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]):
        self.site = site
        nets = sorted(set(networks), key=lambda n: (n.version, n.network_address, n.prefixlen))
        self.networks = tuple(nets)
        by4: dict[int, set[int]] = {}
        by6: dict[int, set[int]] = {}
        for n in nets:
            bits = 32 if n.version == 4 else 128
            shift = bits - n.prefixlen
            (by4 if n.version == 4 else by6).setdefault(shift, set()).add(
                int(n.network_address) >> shift)
        # widest prefixes (largest shift) first: the usual site is one or two /16s
        self._v4 = tuple((s, frozenset(v)) for s, v in sorted(by4.items(), reverse=True))
        self._v6 = tuple((s, frozenset(v)) for s, v in sorted(by6.items(), reverse=True))
        self._cache: dict[bytes, bool] = {}

    def contains(self, addr: bytes) -> bool:
        """Whether a raw IPv4 (4 bytes) or IPv6 (16 bytes) address is inside."""
        inside = self._cache.get(addr)
        return self._lookup(addr) if inside is None else inside

    def _lookup(self, addr: bytes) -> bool:
        a = int.from_bytes(addr, "big")
        inside = False
        for shift, nets in (self._v4 if len(addr) == 4 else self._v6):
            if a >> shift in nets:
                inside = True
                break
        cache = self._cache
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        cache[addr] = inside
        return inside

    def keeps(self, src: bytes, dst: bytes) -> bool:
        """A packet is the site's when its source or its destination is inside
        (the hot path: one or two dict lookups once the addresses are known)."""
        get = self._cache.get
        inside = get(src)
        if inside is None:
            inside = self._lookup(src)
        if inside:
            return True
        inside = get(dst)
        return self._lookup(dst) if inside is None else inside

    def __repr__(self) -> str:
        return f"SiteRanges({self.site!r}, {[str(n) for n in self.networks]})"


class SiteNetworks:
    """site -> SiteRanges, from the controller's `site_networks` setting."""

    def __init__(self, sites: Mapping[str, SiteRanges]):
        self.sites = dict(sites)

    @classmethod
    def from_dict(cls, table: Mapping[str, Any]) -> SiteNetworks:
        """{"site-a": ["10.1.0.0/16", "2001:db8:a::/48"], ...}; raises
        SiteNetworksError naming the site and the entry that is wrong."""
        if not isinstance(table, Mapping):
            raise SiteNetworksError("site_networks: expected a table of site = [CIDR, ...]")
        sites: dict[str, SiteRanges] = {}
        for site, entries in table.items():
            if not isinstance(site, str) or not site:
                raise SiteNetworksError(f"site_networks: bad site name {site!r}")
            if isinstance(entries, str):
                entries = [e.strip() for e in entries.split(",") if e.strip()]
            if not isinstance(entries, (list, tuple)) or not entries:
                raise SiteNetworksError(
                    f"site_networks: site {site!r}: expected a non-empty list of CIDRs")
            nets = []
            for e in entries:
                if not isinstance(e, str):
                    raise SiteNetworksError(f"site_networks: site {site!r}: {e!r} is not a CIDR string")
                try:
                    nets.append(ipaddress.ip_network(e.strip(), strict=True))
                except ValueError as exc:
                    raise SiteNetworksError(f"site_networks: site {site!r}: {exc}") from None
            sites[site] = SiteRanges(site, nets)
        return cls(sites)

    def for_site(self, site: str) -> SiteRanges | None:
        """The ranges of a site, or None: no ranges, every packet kept."""
        return self.sites.get(site) if site else None

    def as_dict(self) -> dict[str, list[str]]:
        return {s: [str(n) for n in r.networks] for s, r in self.sites.items()}

    def __bool__(self) -> bool:
        return bool(self.sites)


def load_site_networks(path: str) -> dict[str, Any]:
    """A TOML or JSON file: either the table itself or `[site_networks]` in it."""
    import json
    import tomllib
    from pathlib import Path
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SiteNetworksError(f"site_networks file {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text) if path.endswith(".json") or text.lstrip().startswith("{") \
            else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise SiteNetworksError(f"site_networks file {path}: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("site_networks"), dict):
        data = data["site_networks"]
    return data
