"""The Galley role: validate raw Istio resources, convert them to the model, keep last-known-good.

Public entry points: `Normalizer` (apply SourceEvents, get MeshSnapshots) and
`validate_resource` (one document's located diagnostics, for `meshagent validate`).
"""

from meshagent.normalize.hosts import resolve_host
from meshagent.normalize.normalizer import Normalizer
from meshagent.normalize.validate import is_supported, validate_resource

__all__ = ["Normalizer", "is_supported", "resolve_host", "validate_resource"]
