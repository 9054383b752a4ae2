"""Storage limits per graph (the ``max_storage_bytes`` entitlement: the graph's plan, an operator override, or a
legacy per-graph override).  A write that would take the graph past its limit answers 413 ``storage_limit_exceeded``;
reads keep working.  The query path runs such a request in a READ ONLY transaction, so the engine itself refuses any
write in it (the size a write adds is not known before it runs: the request's own size is the lower bound taken)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from robosystems.billing.entitlements import GraphEntitlements
from robosystems.config import Settings
from robosystems.errors import AppError, ServiceUnavailable

#: how big a graph is on disk: registered by the graphs feature (it owns the backend; it imports billing, not the
#: other way round) — see :func:`robosystems.graphs.provisioning.backend_for`
SizeProbe = Callable[[Settings, str], int]
_size_probe: list[SizeProbe] = []


def register_size_probe(probe: SizeProbe) -> None:
    _size_probe[:] = [probe]


def graph_size_bytes(settings: Settings, graph_id: str) -> int:
    """The graph's size on disk (blocking: call it in a thread)."""
    if not _size_probe:
        raise ServiceUnavailable("Graph storage is not available here", code="graph_unavailable")
    return _size_probe[0](settings, graph_id)


class StorageLimitExceeded(AppError):
    status_code, code, detail = 413, "storage_limit_exceeded", "The graph has reached its storage limit"


@dataclass(frozen=True)
class StorageGuard:
    used_bytes: int
    limit_bytes: int
    source: str

    @property
    def within_limit(self) -> bool:
        return self.limit_bytes < 0 or self.used_bytes <= self.limit_bytes

    def allows_write(self, request_bytes: int) -> bool:
        return self.limit_bytes < 0 or self.used_bytes + request_bytes <= self.limit_bytes

    def refusal(self) -> StorageLimitExceeded:
        return StorageLimitExceeded(
            f"The graph uses {self.used_bytes} of its {self.limit_bytes} bytes of storage: this write would exceed "
            "the limit (remove data or move to a larger plan)",
            extra={"limit": "max_storage_bytes", "used_bytes": self.used_bytes, "limit_bytes": self.limit_bytes},
        )


def storage_guard(limits: GraphEntitlements, used_bytes: int) -> StorageGuard:
    entry = limits.limits["max_storage_bytes"]
    return StorageGuard(used_bytes, int(entry.value), entry.source)
