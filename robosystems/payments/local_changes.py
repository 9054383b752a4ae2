"""The local provider's subscription changes (placeholder, filled below)."""

from __future__ import annotations

from robosystems.payments.local_core import LocalCore


class LocalChanges(LocalCore):
    pass
