"""sidecar: service discovery for Docker hosts, drop-in for the Go Sidecar."""

__version__ = "0.1.0"
