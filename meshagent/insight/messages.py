"""Analysis messages: a stable code, a level, the resource and its file:line, a text.

Codes follow istioctl analyze (istio/istio pkg/config/analysis/msg/messages.yaml) where the
meaning is the same, with Istio's level and message text; MA codes are meshagent's own, for
checks Istio has no code for. A code never changes meaning once released.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any


class Level(IntEnum):
    """Istio's diag levels; a higher value is worse."""

    INFO = 0
    WARNING = 1
    ERROR = 2

    @property
    def title(self) -> str:
        """ "Info", "Warning", "Error", as istioctl prints them."""
        return self.name.capitalize()

    @classmethod
    def parse(cls, text: str) -> Level:
        """A level from its name in any case ("error", "Warning", "INFO")."""
        try:
            return cls[text.strip().upper()]
        except KeyError:
            valid = ", ".join(lv.title for lv in cls)
            raise ValueError(f"unknown level {text!r} (valid: {valid})") from None


@dataclass(frozen=True, slots=True)
class MessageType:
    """One kind of finding: code, Istio's (or meshagent's) name, level and what it means."""

    code: str
    name: str
    level: Level
    description: str

    @property
    def documentation_url(self) -> str:
        """Istio's page for IST codes; the README's codes table for MA codes."""
        if self.code.startswith("IST"):
            return f"https://istio.io/latest/docs/reference/config/analysis/{self.code.lower()}/"
        return "README.md#analyze"


E, W, INF = Level.ERROR, Level.WARNING, Level.INFO
_TYPES = (
    MessageType("IST0001", "InternalError", E, "A check failed: a bug in meshagent."),
    MessageType("IST0002", "Deprecated", W, "A field the configuration uses is deprecated."),
    MessageType("IST0101", "ReferencedResourceNotFound", E, "A referenced resource is missing."),
    MessageType("IST0106", "SchemaValidationError", E, "The resource fails validation."),
    MessageType(
        "IST0109",
        "ConflictingMeshGatewayVirtualServiceHosts",
        E,
        "VirtualServices bound to the mesh gateway define the same host.",
    ),
    MessageType(
        "IST0110",
        "ConflictingSidecarWorkloadSelectors",
        E,
        "Sidecars of one namespace have the same workload selector: only one applies.",
    ),
    MessageType(
        "IST0111",
        "MultipleSidecarsWithoutWorkloadSelectors",
        E,
        "Several Sidecars of one namespace have no workload selector: only one applies.",
    ),
    MessageType(
        "IST0118",
        "PortNameIsNotUnderNamingConvention",
        INF,
        "A Kubernetes Service port's name and appProtocol give no protocol: served as TCP.",
    ),
    MessageType(
        "IST0127", "NoMatchingWorkloadsFound", W, "A workload selector matches no workload."
    ),
    MessageType(
        "IST0130",
        "VirtualServiceUnreachableRule",
        W,
        "A VirtualService rule is never used: earlier rules take all of its requests.",
    ),
    MessageType(
        "IST0131",
        "VirtualServiceIneffectiveMatch",
        INF,
        "A VirtualService match duplicates (or is covered by) a match of an earlier rule.",
    ),
    MessageType(
        "IST0132",
        "VirtualServiceHostNotFoundInGateway",
        W,
        "A VirtualService host is served by no server of a Gateway it is bound to.",
    ),
    MessageType("IST0133", "SchemaWarning", W, "The resource has a validation warning."),
    MessageType(
        "IST0145",
        "ConflictingGateways",
        E,
        "Gateways with the same selector serve the same host on the same port.",
    ),
    MessageType(
        "IST0173",
        "DestinationRuleSubsetNotSelectPods",
        E,
        "A DestinationRule subset selects no endpoint of its host.",
    ),
    MessageType(
        "IST0174",
        "UnknownDestinationRuleHost",
        W,
        "A DestinationRule's host matches no service.",
    ),
    MessageType(
        "MA0001",
        "ConflictingServiceEntryProtocol",
        E,
        "ServiceEntries give one host and port different protocols.",
    ),
    MessageType(
        "MA0002",
        "ServiceEntryPortProtocolUnset",
        INF,
        "A ServiceEntry port names no protocol: meshagent serves it as TCP.",
    ),
)
TYPES: dict[str, MessageType] = {t.code: t for t in _TYPES}


@dataclass(frozen=True, slots=True)
class Message:
    """One finding about one resource.

    kind/namespace/name name the resource ("" when the finding is about a file); location is
    where a person opens it ("path:line" of the field for files, else the provenance's
    location, e.g. "consul index 42"); field is the dotted path in the document ("" = the
    whole resource); text is the message as istioctl would word it.
    """

    code: str
    text: str
    kind: str = ""
    namespace: str = ""
    name: str = ""
    location: str = ""
    field: str = ""
    source: str = ""

    @property
    def type(self) -> MessageType:
        return TYPES[self.code]

    @property
    def level(self) -> Level:
        return TYPES[self.code].level

    @property
    def origin(self) -> str:
        """ "Kind namespace/name", istioctl's origin of a message."""
        if not self.kind and not self.name:
            return ""
        name = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return f"{self.kind} {name}".strip()

    @property
    def sort_key(self) -> tuple[str, ...]:
        return (self.location, self.code, self.kind, self.namespace, self.name, self.text)

    def __str__(self) -> str:
        """istioctl's log line: `Error [IST0101] (Kind ns/name file:line) text`."""
        where = " ".join(p for p in (self.origin, self.location) if p)
        return f"{self.level.title} [{self.code}]{f' ({where})' if where else ''} {self.text}"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Message:
        """A message from as_json()'s form (the running agent's /debug/analyze)."""
        kind, _, name = str(data.get("origin", "")).partition(" ")
        namespace, slash, short = name.rpartition("/")
        return cls(
            code=str(data["code"]),
            text=str(data.get("message", "")),
            kind=kind,
            namespace=namespace if slash else "",
            name=short if slash else name,
            location=str(data.get("reference", "")),
            field=str(data.get("field", "")),
            source=str(data.get("source", "")),
        )

    def as_json(self) -> dict[str, Any]:
        """istioctl's JSON fields (code, level, message, origin, reference, documentationUrl)
        plus meshagent's field and source."""
        return {
            "code": self.code,
            "level": self.level.title,
            "message": self.text,
            "origin": self.origin,
            "reference": self.location,
            "field": self.field,
            "source": self.source,
            "documentationUrl": self.type.documentation_url,
        }
