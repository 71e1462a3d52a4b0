"""What can go wrong when a plan is carried out, as the reconcile loop sees it.

The adapters raise these (they may import `reconcile`; the loop may not import them), and
the loop decides what follows: a rejected config keeps the running one, a refused runtime
command falls back to write + validate + reload, a busy server is retried later.
"""

from __future__ import annotations


class ApplyError(Exception):
    """An action that did not take effect; the message says which and why."""


class ConfigRejected(ApplyError):
    """A new config failed validation; the message carries HAProxy's own words. The file on
    disk and the running HAProxy are unchanged."""


class RuntimeRefused(ApplyError):
    """The runtime API refused or failed a command; the message has the command and the
    answer."""


class ServerBusy(RuntimeRefused):
    """A server to delete still has requests in flight. It is in maintenance (it gets no new
    requests) and the deletion is retried later."""


class ProcessFailed(ApplyError):
    """HAProxy did not start or reload; the message has its last words."""


class AddressFailed(ApplyError):
    """The bind address could not be added to the interface."""
