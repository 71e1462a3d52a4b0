"""The pure cluster: the memberlist-fork wire codec and the SWIM membership machine.

No I/O, no clock, no randomness of its own (time and a seeded generator come in as
arguments), like `sidecar.state`; the transport in `sidecar.adapters` only moves bytes.
"""
