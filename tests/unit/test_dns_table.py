"""The DNS name table (meshagent/dns/table.py): which names answer with what as the mesh changes."""

from __future__ import annotations

from types import MappingProxyType

from meshagent.dns.resolvconf import parse_resolv_conf
from meshagent.dns.table import NameTable, TableOptions, build_table, host_names
from meshagent.model.services import Endpoint, Resolution, Service, ServicePort
from meshagent.model.snapshot import MeshSnapshot
from meshagent.model.source import Provenance
from meshagent.normalize import Normalizer
from tests.unit.normalize_helpers import delete, upsert

PORTS = (ServicePort(80, "http", "HTTP"),)
KUBE = Provenance("kubernetes", "Service shop/db", "Service", "shop", "db")


def _snap(
    *services: Service, endpoints: dict[str, tuple[Endpoint, ...]] | None = None
) -> MeshSnapshot:
    return MeshSnapshot(
        version=1,
        services=MappingProxyType({s.host: s for s in services}),
        endpoints=MappingProxyType(endpoints or {}),
    )


def _svc(host: str, resolution: Resolution = Resolution.STATIC, **kw: object) -> Service:
    return Service(host, "ns", PORTS, resolution, **kw)  # type: ignore[arg-type]


def test_addresses_cluster_ips_and_auto_vips_answer() -> None:
    table = build_table(
        _snap(
            _svc("api.example.com", addresses=("10.0.0.1", "fd00::1", "10.1.0.0/16")),
            _svc("web.shop.svc.cluster.local", addresses=("10.96.0.5",), provenance=KUBE),
            _svc("auto.example.com", auto_addresses=("240.240.1.2", "2001:2::f0f0:102")),
            _svc("cidr.example.com", addresses=("10.2.0.0/16",)),
            _svc("nothing.example.com", Resolution.DNS),
        )
    )
    api = table.lookup("api.example.com.")
    assert api is not None and api.v4 == ("10.0.0.1",) and api.v6 == ("fd00::1",)
    web = table.lookup("web.shop.svc.cluster.local.")
    assert web is not None and web.v4 == ("10.96.0.5",)
    auto = table.lookup("auto.example.com.")
    assert auto is not None and auto.v4 == ("240.240.1.2",) and auto.v6 == ()  # no dual stack
    assert table.lookup("cidr.example.com.") is None  # CIDRs only: not a name to answer
    assert table.lookup("nothing.example.com.") is None
    dual = build_table(
        _snap(_svc("auto.example.com", auto_addresses=("240.240.1.2", "2001:2::f0f0:102"))),
        TableOptions(dual_stack=True),
    )
    assert dual.lookup("auto.example.com.").v6 == ("2001:2::f0f0:102",)  # type: ignore[union-attr]


def test_headless_services_answer_their_healthy_endpoints() -> None:
    eps = (
        Endpoint("10.0.0.2"),
        Endpoint("10.0.0.1"),
        Endpoint("10.0.0.3", healthy=False),
        Endpoint("db.internal"),  # not an IP: left out
    )
    table = build_table(
        _snap(
            _svc("db.shop.svc.cluster.local", provenance=KUBE),
            _svc("pass.example.com", Resolution.NONE),
            _svc("*.wild.example.com", Resolution.NONE),
            endpoints={
                "db.shop.svc.cluster.local": eps,
                "pass.example.com": eps,
                "*.wild.example.com": eps,
            },
        )
    )
    for name in ("db.shop.svc.cluster.local.", "pass.example.com."):
        assert table.lookup(name).v4 == ("10.0.0.1", "10.0.0.2")  # type: ignore[union-attr]
    assert table.lookup("x.wild.example.com.") is None


def test_short_names_like_istio() -> None:
    options = TableOptions(namespace="demo", search_domains=("corp.example",))
    names = {
        n: (rank, target) for n, rank, target in host_names("hello.demo.svc.cluster.local", options)
    }
    assert set(names) == {
        "hello.demo.svc.cluster.local.",
        "hello.demo.",
        "hello.demo.svc.",
        "hello.",  # this node's namespace
        "hello.demo.svc.cluster.local.corp.example.",
        "hello.demo.corp.example.",
        "hello.demo.svc.corp.example.",
        "hello.corp.example.",
    }
    assert names["hello.demo.corp.example."] == (2, "hello.demo.")
    other = {
        n for n, _, _ in host_names("db.prod.svc.cluster.local", TableOptions(namespace="demo"))
    }
    assert other == {"db.prod.svc.cluster.local.", "db.prod.", "db.prod.svc."}
    plain = {n for n, _, _ in host_names("api.example.com", TableOptions(namespace="demo"))}
    assert plain == {"api.example.com."}


def test_wildcard_hosts_answer_names_under_them_and_exact_names_win() -> None:
    table = build_table(
        _snap(
            _svc("*.example.com", addresses=("10.0.0.9",)),
            _svc("a.example.com", addresses=("10.0.0.1",)),
        )
    )
    assert table.lookup("x.y.example.com.").v4 == ("10.0.0.9",)  # type: ignore[union-attr]
    assert table.lookup("a.example.com.").v4 == ("10.0.0.1",)  # type: ignore[union-attr]
    assert table.lookup("example.com.") is None


def test_a_host_s_own_name_beats_another_host_s_short_form() -> None:
    # "hello.demo." is the short form of the first host and (oddly) the host of the second
    table = build_table(
        _snap(
            _svc("hello.demo.svc.cluster.local", addresses=("10.0.0.1",)),
            _svc("hello.demo", addresses=("10.0.0.2",)),
        ),
        TableOptions(namespace="demo"),
    )
    assert table.lookup("hello.demo.").v4 == ("10.0.0.2",)  # type: ignore[union-attr]
    assert table.lookup("hello.").v4 == ("10.0.0.1",)  # type: ignore[union-attr]


def _se(name: str, host: str, extra: str = "") -> str:
    return f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: {name}
  namespace: demo
spec:
  hosts: [{host}]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 10.0.0.1}}]
{extra}"""


def test_updates_follow_the_normalizer_incrementally() -> None:
    n = Normalizer()
    table = NameTable(TableOptions(namespace="demo"))
    snap, _ = n.apply([upsert(_se("hello", "hello"), _se("api", "api.example.com"))])
    assert table.update(snap) == 2
    hello = table.lookup("hello.")
    assert hello is not None and hello.v4[0].startswith("240.240.")
    assert table.update(snap) == 0  # the same snapshot: nothing to do
    # an unrelated change looks at the changed host only
    snap, _ = n.apply([upsert(_se("other", "other.example.com"))])
    assert table.update(snap) == 1
    # a name removed from the mesh stops answering (all its forms)
    snap, _ = n.apply([delete(_se("hello", "hello"))])
    assert table.update(snap) == 1
    assert table.lookup("hello.") is None and table.lookup("hello.demo.svc.cluster.local.") is None
    assert table.lookup("api.example.com.") is not None
    # a table that missed a snapshot compares the maps instead
    late = NameTable(TableOptions(namespace="demo"))
    late.update(snap)
    assert late.lookup("other.example.com.") is not None and late.lookup("hello.") is None


def test_resolv_conf() -> None:
    conf = parse_resolv_conf(
        "# comment\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\nnameserver bogus\n"
        "nameserver 10.0.0.2\nsearch Corp.Example. svc.local\noptions ndots:5\n"
    )
    assert conf.nameservers == ("10.0.0.2", "fe80::1")
    assert conf.search == ("corp.example", "svc.local")
