"""The DNS proxy (issue 12): mesh names answered from the model, the rest forwarded.

table.py: the names, from the MeshSnapshot; server.py: the UDP/TCP server; wire.py: plain
queries read and answered by hand; upstream.py: forwarding to the host's resolvers;
resolvconf.py: reading /etc/resolv.conf. The agent starts it (agent/dns_runtime.py).
"""

from meshagent.dns.server import DnsProxy
from meshagent.dns.table import NameTable, TableOptions, build_table
from meshagent.dns.upstream import Server, Upstreams

__all__ = ["DnsProxy", "NameTable", "Server", "TableOptions", "Upstreams", "build_table"]
