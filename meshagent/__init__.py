"""meshagent: a per-host service-mesh agent for machines that are not Kubernetes pods."""

__version__ = "0.1.0"
