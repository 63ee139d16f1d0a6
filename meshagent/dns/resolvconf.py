"""Reading the host's resolver configuration (resolv.conf(5)): nameservers and search domains."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class ResolvConf:
    """The `nameserver` addresses (in order) and the `search` domains (the last line wins)."""

    nameservers: tuple[str, ...] = ()
    search: tuple[str, ...] = ()


def parse_resolv_conf(text: str) -> ResolvConf:
    """resolv.conf text; lines it does not understand are skipped, as libc does."""
    servers: list[str] = []
    search: tuple[str, ...] = ()
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) < 2:
            continue
        if words[0] == "nameserver":
            address = words[1].split("%", 1)[0]  # fe80::1%eth0: the zone is not ours to use
            try:
                servers.append(str(ipaddress.ip_address(address)))
            except ValueError:
                continue
        elif words[0] in ("search", "domain"):
            search = tuple(w.strip(".").lower() for w in words[1:] if w.strip("."))
    return ResolvConf(tuple(dict.fromkeys(servers)), search)


def read_resolv_conf(path: Path) -> ResolvConf:
    """The file at path; empty when it cannot be read (then nothing is forwarded)."""
    try:
        return parse_resolv_conf(path.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return ResolvConf()
