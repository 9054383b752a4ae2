"""Graph database backend: one embedded LadybugDB database per graph, behind a small interface.

* ``create`` makes ``<root>/<graph_id>/graph.lbug`` with the base schema; it is idempotent (a
  retry after a crash finds the schema and does nothing) and the caller health-checks after.
* ``info`` measures size on disk and counts nodes/relationships from the database itself.
* ``query`` runs Cypher with parameters, a timeout and a row cap; ``read_only=True`` opens the
  database read-only, so writing queries are refused by the engine itself (frozen graphs).
* ``remove`` deletes the files (partial files after a failed provisioning, or after retention).

LadybugDB allows one read-write ``Database`` per file and process; handles are cached per
process and closed by :meth:`close`/:meth:`remove` (opening one costs ~50 ms).  Queries on one handle are
serialized by its lock and share one connection.  Calls are blocking: run them in a thread.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import ladybug

GRAPH_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
BASE_SCHEMA_VERSION = "1"
BUFFER_POOL_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_DB_SIZE = 1 << 41  # 2 TiB: the largest plan's storage
DEFAULT_MAX_OPEN = 32
BASE_SCHEMA = (
    "CREATE NODE TABLE IF NOT EXISTS Entity(identifier STRING PRIMARY KEY, name STRING, kind STRING, "
    "properties STRING)",
    "CREATE NODE TABLE IF NOT EXISTS Meta(key STRING PRIMARY KEY, value STRING)",
    "CREATE REL TABLE IF NOT EXISTS RELATES_TO(FROM Entity TO Entity, kind STRING, properties STRING)",
)


class GraphBackendError(Exception):
    """The backend could not do what was asked (message is safe to log, not to return)."""


class GraphBusy(GraphBackendError):
    """Another process holds the database's write lock (LadybugDB: one read-write process per file)."""


class QueryRefused(GraphBackendError):
    """The query failed for a reason the caller caused.  ``kind`` says which (a stable code for the API):
    ``forbidden_statement`` (refused by :func:`check_statement` before running), ``syntax``, ``binder``
    (unknown label/property/parameter), ``read_only`` (a write on a read-only database or transaction),
    ``runtime`` (anything else the engine refused)."""

    def __init__(self, message: str, kind: str = "runtime") -> None:
        super().__init__(message)
        self.kind = kind


class QueryTimeout(GraphBackendError):
    """The query ran past its timeout and was interrupted."""


@dataclass(frozen=True)
class GraphInfo:
    size_bytes: int
    node_count: int
    relationship_count: int
    node_labels: list[str]
    relationship_types: list[str]
    schema_version: str | None


@dataclass(frozen=True)
class QueryOutput:
    columns: list[str]
    rows: list[dict[str, Any]]
    truncated: bool
    execution_ms: float


@dataclass
class _Handle:
    database: Any
    read_only: bool
    lock: threading.Lock = field(default_factory=threading.Lock)
    connection: Any = None  # one reused connection (queries on a handle are serialized by ``lock``)
    closed: bool = False

    def conn(self) -> Any:
        if self.connection is None:
            self.connection = ladybug.Connection(self.database)
        return self.connection

    def drop_connection(self) -> None:
        if self.connection is not None:
            with contextlib.suppress(RuntimeError):
                self.connection.close()
            self.connection = None

    def close(self) -> None:
        self.drop_connection()
        self.database.close()
        self.closed = True


class GraphBackend(Protocol):
    root: Path

    def create(self, graph_id: str) -> None: ...
    def exists(self, graph_id: str) -> bool: ...
    def health(self, graph_id: str, *, read_only: bool = False) -> bool: ...
    def info(self, graph_id: str, *, read_only: bool = False) -> GraphInfo: ...
    def counts(self, graph_id: str, *, read_only: bool = False) -> tuple[dict[str, int], dict[str, int]]: ...
    def size_bytes(self, graph_id: str) -> int: ...
    def last_modified(self, graph_id: str) -> float | None: ...
    def query(
        self,
        graph_id: str,
        cypher: str,
        parameters: dict[str, Any] | None,
        *,
        timeout_ms: int,
        max_rows: int,
        read_only: bool,
        read_only_transaction: bool = False,
    ) -> QueryOutput: ...
    def close(self, graph_id: str) -> None: ...
    def close_all(self) -> None: ...
    def remove(self, graph_id: str) -> None: ...


class LadybugBackend:
    """``max_db_size``: the address space LadybugDB reserves per open database (a power of two; its default,
    8 TiB, leaves room for only ~15 open databases in a 128 TiB process address space) — also the largest a
    graph can grow.  ``max_open``: open databases kept per process; the least recently used idle one is closed
    beyond it (reopening costs ~50 ms)."""

    def __init__(self, root: Path, *, max_db_size: int = DEFAULT_MAX_DB_SIZE, max_open: int = DEFAULT_MAX_OPEN) -> None:
        if max_db_size <= 0 or max_db_size & (max_db_size - 1):
            raise ValueError("max_db_size must be a power of two")
        self.root = root
        self.max_db_size = max_db_size
        self.max_open = max(1, max_open)
        self._handles: OrderedDict[str, _Handle] = OrderedDict()
        self._lock = threading.Lock()

    # --- paths ------------------------------------------------------------------------------
    def _dir(self, graph_id: str) -> Path:
        if not GRAPH_ID_RE.match(graph_id):
            raise GraphBackendError("invalid graph id")
        return self.root / graph_id

    def _file(self, graph_id: str) -> Path:
        return self._dir(graph_id) / "graph.lbug"

    def exists(self, graph_id: str) -> bool:
        return self._file(graph_id).exists()

    # --- handles ------------------------------------------------------------------------------
    def _handle(self, graph_id: str, read_only: bool, *, create: bool = False) -> _Handle:
        with self._lock:
            handle = self._handles.get(graph_id)
            if handle is not None and (handle.read_only == read_only or (create and not handle.read_only)):
                self._handles.move_to_end(graph_id)
                return handle
            if handle is not None:
                with handle.lock:  # wait for a running query on the old handle
                    handle.close()
                del self._handles[graph_id]
            path = self._file(graph_id)
            if not create and not path.exists():
                raise GraphBackendError("graph database does not exist")
            self._evict_idle()
            try:
                database = ladybug.Database(
                    str(path), read_only=read_only, buffer_pool_size=BUFFER_POOL_BYTES, max_db_size=self.max_db_size
                )
            except RuntimeError as exc:
                if "lock" in str(exc).lower():
                    raise GraphBusy("graph database is locked by another process") from exc
                raise GraphBackendError(f"cannot open graph database: {exc}") from exc
            handle = self._handles[graph_id] = _Handle(database, read_only)
            return handle

    def _evict_idle(self) -> None:
        """Close least recently used handles nobody is using until there is room for one more (caller holds
        ``self._lock``).  A handle in use is skipped: the cap is exceeded rather than a query waited for."""
        for graph_id in list(self._handles):
            if len(self._handles) < self.max_open:
                return
            handle = self._handles[graph_id]
            if handle.lock.acquire(blocking=False):
                try:
                    handle.close()
                finally:
                    handle.lock.release()
                del self._handles[graph_id]

    @contextlib.contextmanager
    def _locked(self, graph_id: str, read_only: bool, *, create: bool = False) -> Iterator[_Handle]:
        """The graph's handle, locked; a handle closed meanwhile (evicted, mode switch, removal) is reopened."""
        while True:
            handle = self._handle(graph_id, read_only, create=create)
            handle.lock.acquire()
            if not handle.closed:
                break
            handle.lock.release()
        try:
            yield handle
        finally:
            handle.lock.release()

    def close(self, graph_id: str) -> None:
        with self._lock:
            handle = self._handles.pop(graph_id, None)
        if handle is not None:
            with handle.lock:
                handle.close()

    def close_all(self) -> None:
        with self._lock:
            graph_ids = list(self._handles)
        for graph_id in graph_ids:
            self.close(graph_id)

    # --- lifecycle ------------------------------------------------------------------------------
    def create(self, graph_id: str) -> None:
        """Create the database with the base schema; idempotent (``IF NOT EXISTS`` + ``MERGE``).  Goes through
        the process's handle cache, so it never opens a second read-write handle on a file this process holds."""
        directory = self._dir(graph_id)
        directory.mkdir(parents=True, exist_ok=True)
        with self._locked(graph_id, read_only=False, create=True) as handle:
            try:
                conn = handle.conn()
                for statement in BASE_SCHEMA:
                    conn.execute(statement)
                conn.execute("MERGE (m:Meta {key: 'schema_version'}) SET m.value = $v", {"v": BASE_SCHEMA_VERSION})
            except RuntimeError as exc:
                handle.drop_connection()
                raise GraphBackendError(f"cannot create graph database: {exc}") from exc

    def health(self, graph_id: str, *, read_only: bool = False) -> bool:
        try:
            out = self.query(
                graph_id, "MATCH (m:Meta) RETURN count(m) AS c", None, timeout_ms=5000, max_rows=1, read_only=read_only
            )
        except GraphBackendError:
            return False
        return bool(out.rows) and int(out.rows[0]["c"]) >= 1

    def remove(self, graph_id: str) -> None:
        self.close(graph_id)
        shutil.rmtree(self._dir(graph_id), ignore_errors=True)

    # --- reads ----------------------------------------------------------------------------------
    def size_bytes(self, graph_id: str) -> int:
        directory = self._dir(graph_id)
        if not directory.exists():
            return 0
        return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())

    def last_modified(self, graph_id: str) -> float | None:
        """Newest mtime (epoch seconds) of the database files, ``None`` when there are none."""
        directory = self._dir(graph_id)
        if not directory.exists():
            return None
        times = [p.stat().st_mtime for p in directory.rglob("*") if p.is_file()]
        return max(times) if times else None

    def info(self, graph_id: str, *, read_only: bool = False) -> GraphInfo:
        def run(cypher: str, max_rows: int = 1) -> QueryOutput:
            return self.query(graph_id, cypher, None, timeout_ms=10000, max_rows=max_rows, read_only=read_only)

        tables = run("CALL show_tables() RETURN *", 10000)
        labels = sorted(str(r["name"]) for r in tables.rows if r.get("type") == "NODE" and r.get("name") != "Meta")
        rel_types = sorted(str(r["name"]) for r in tables.rows if r.get("type") == "REL")
        nodes = run("MATCH (n) RETURN count(n) AS c")
        rels = run("MATCH ()-[r]->() RETURN count(r) AS c")
        meta = run("MATCH (m:Meta) RETURN count(m) AS c")
        version = run("MATCH (m:Meta {key: 'schema_version'}) RETURN m.value AS v")
        return GraphInfo(
            size_bytes=self.size_bytes(graph_id),
            node_count=int(nodes.rows[0]["c"]) - int(meta.rows[0]["c"]),
            relationship_count=int(rels.rows[0]["c"]),
            node_labels=labels,
            relationship_types=rel_types,
            schema_version=str(version.rows[0]["v"]) if version.rows else None,
        )

    def counts(self, graph_id: str, *, read_only: bool = False) -> tuple[dict[str, int], dict[str, int]]:
        """Nodes per label and relationships per type (the internal ``Meta`` table excluded)."""

        def run(cypher: str, max_rows: int = 1) -> QueryOutput:
            return self.query(graph_id, cypher, None, timeout_ms=10000, max_rows=max_rows, read_only=read_only)

        tables = run("CALL show_tables() RETURN *", 10000).rows
        nodes: dict[str, int] = {}
        rels: dict[str, int] = {}
        for table in tables:
            name = str(table.get("name"))
            if not GRAPH_ID_RE.match(name):  # names are identifiers; never interpolate anything else
                continue
            if table.get("type") == "NODE" and name != "Meta":
                nodes[name] = int(run(f"MATCH (n:`{name}`) RETURN count(n) AS c").rows[0]["c"])
            elif table.get("type") == "REL":
                rels[name] = int(run(f"MATCH ()-[r:`{name}`]->() RETURN count(r) AS c").rows[0]["c"])
        return nodes, rels

    def query(
        self,
        graph_id: str,
        cypher: str,
        parameters: dict[str, Any] | None,
        *,
        timeout_ms: int,
        max_rows: int,
        read_only: bool,
        read_only_transaction: bool = False,
    ) -> QueryOutput:
        """Run one statement.  ``read_only`` opens the database read-only (frozen graphs);
        ``read_only_transaction`` runs it in a READ ONLY transaction on the normal handle (callers with read
        access only), so the engine refuses writes without reopening the database."""
        with self._locked(graph_id, read_only) as handle:
            conn = handle.conn()
            in_txn = False
            healthy = False
            try:
                conn.set_query_timeout(timeout_ms)
                start = time.perf_counter()
                try:
                    if read_only_transaction and not read_only:
                        conn.execute("BEGIN TRANSACTION READ ONLY")
                        in_txn = True
                    result = conn.execute(cypher, parameters or {})
                except RuntimeError as exc:
                    raise _classify(exc) from exc
                if isinstance(result, list):
                    result = result[-1]
                columns = list(result.get_column_names())
                rows: list[dict[str, Any]] = []
                truncated = False
                while result.has_next():
                    if len(rows) >= max_rows:
                        truncated = True
                        break
                    values = result.get_next()
                    rows.append({c: _jsonable(v) for c, v in zip(columns, values, strict=False)})
                result.close()
                if in_txn:
                    conn.execute("COMMIT")
                    in_txn = False
                healthy = True
                return QueryOutput(columns, rows, truncated, (time.perf_counter() - start) * 1000)
            except QueryRefused:
                healthy = not in_txn  # an engine refusal leaves an auto-commit connection usable
                raise
            finally:
                if in_txn:
                    with contextlib.suppress(RuntimeError):
                        conn.execute("ROLLBACK")
                if not healthy:  # timeouts and unexpected states: start the next query on a fresh connection
                    handle.drop_connection()


def _classify(exc: RuntimeError) -> GraphBackendError:
    message = str(exc)
    lowered = message.lower()
    first = message.splitlines()[0][:300] if message else "query failed"
    if "interrupt" in lowered or "timeout" in lowered:
        return QueryTimeout("query timed out")
    if "read-only" in lowered or "read only" in lowered:
        return QueryRefused(first, "read_only")
    if lowered.startswith("parser exception"):
        return QueryRefused(first, "syntax")
    if lowered.startswith("binder exception"):
        return QueryRefused(first, "binder")
    return QueryRefused(first, "runtime")


# --- statement guard ------------------------------------------------------------------------------

#: Statements a caller may never run through the query endpoint: they reach outside the graph (files, other
#: databases, extensions, settings) or change its schema/transaction state.
FORBIDDEN_KEYWORDS = frozenset(
    {
        "COPY",
        "LOAD",
        "INSTALL",
        "UNINSTALL",
        "ATTACH",
        "USE",
        "EXPORT",
        "IMPORT",
        "CHECKPOINT",
        "BEGIN",
        "COMMIT",
        "ROLLBACK",
        "FORCE",
        "ALTER",
        "DROP",
        "ANALYZE",
        "COMMENT",
    }
)
#: ``CREATE <kind>`` that is DDL (schema), not data.
DDL_CREATE_KINDS = frozenset({"NODE", "REL", "RDFGRAPH", "GRAPH", "SEQUENCE", "MACRO", "TYPE", "INDEX"})
#: Procedures ``CALL`` may name (read-only catalog information).
ALLOWED_PROCEDURES = frozenset({"SHOW_TABLES", "TABLE_INFO", "SHOW_CONNECTION", "DB_VERSION", "SHOW_INDEXES"})
PARAMETER_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def _tokens(cypher: str) -> tuple[list[tuple[str, str]], bool]:
    """Words and punctuation outside string literals, backtick names and comments, upper-cased; plus whether
    a statement follows a ``;`` (several statements)."""
    tokens: list[tuple[str, str]] = []  # (token, previous non-space char)
    i, n = 0, len(cypher)
    prev = ""
    seen_semicolon = False
    multiple = False
    while i < n:
        ch = cypher[i]
        if ch in "'\"":
            quote = ch
            i += 1
            while i < n and cypher[i] != quote:
                i += 2 if cypher[i] == "\\" else 1
            i += 1
            prev = quote
            if seen_semicolon:
                multiple = True
            continue
        if ch == "`":
            end = cypher.find("`", i + 1)
            i = n if end == -1 else end + 1
            prev = "`"
            if seen_semicolon:
                multiple = True
            continue
        if cypher.startswith("//", i):
            end = cypher.find("\n", i)
            i = n if end == -1 else end + 1
            continue
        if cypher.startswith("/*", i):
            end = cypher.find("*/", i + 2)
            i = n if end == -1 else end + 2
            continue
        if ch.isspace():
            i += 1
            continue
        if ch == ";":
            seen_semicolon = True
            prev = ch
            i += 1
            continue
        if seen_semicolon:
            multiple = True
        if ch.isalpha() or ch == "_":
            j = i
            while j < n and (cypher[j].isalnum() or cypher[j] == "_"):
                j += 1
            tokens.append((cypher[i:j].upper(), prev))
            prev = "w"
            i = j
            continue
        tokens.append((ch, prev))
        prev = ch
        i += 1
    return tokens, multiple


def check_statement(cypher: str) -> None:
    """Refuse (``QueryRefused`` kind ``forbidden_statement``) what the query endpoint must not run: several
    statements, file/extension/database access (COPY, LOAD, INSTALL, ATTACH, EXPORT, IMPORT, USE …), schema
    changes (CREATE NODE/REL TABLE, ALTER, DROP), transaction control, settings, and procedures other than the
    read-only catalog ones.  A keyword used as a property (``n.load``) is fine; as a bare name it must be
    back-quoted."""
    if not cypher.strip():
        raise QueryRefused("empty query", "forbidden_statement")
    tokens, multiple = _tokens(cypher)
    if multiple:
        raise QueryRefused("only one statement per request", "forbidden_statement")
    for index, (word, prev) in enumerate(tokens):
        if prev == "." or not (word[0].isalpha() or word[0] == "_"):
            continue
        following = tokens[index + 1][0] if index + 1 < len(tokens) else ""
        if word in FORBIDDEN_KEYWORDS:
            raise QueryRefused(f"{word} is not allowed here", "forbidden_statement")
        if word == "DETACH" and following != "DELETE":
            raise QueryRefused("DETACH is only allowed as DETACH DELETE", "forbidden_statement")
        if word == "CREATE" and following in DDL_CREATE_KINDS:
            raise QueryRefused("schema changes are not allowed here", "forbidden_statement")
        if word == "CALL" and following not in ALLOWED_PROCEDURES:
            raise QueryRefused("this procedure is not allowed here", "forbidden_statement")


def check_parameters(parameters: dict[str, Any] | None) -> None:
    for name in parameters or {}:
        if not PARAMETER_NAME_RE.match(str(name)):
            raise QueryRefused("invalid parameter name", "forbidden_statement")


# --- one backend per storage root and process -------------------------------------------------------

_registry_lock = threading.Lock()
_registry: dict[Path, GraphBackend] = {}
_factory: Callable[[Path], GraphBackend] | None = None


def get_backend(
    root: Path, *, max_db_size: int = DEFAULT_MAX_DB_SIZE, max_open: int = DEFAULT_MAX_OPEN
) -> GraphBackend:
    """The process's backend for ``root`` (handles are cached per process, so there must be one instance; the
    options of the first call win)."""
    root = root.resolve()
    with _registry_lock:
        backend = _registry.get(root)
        if backend is None:
            root.mkdir(parents=True, exist_ok=True)
            if _factory is not None:
                backend = _factory(root)
            else:
                backend = LadybugBackend(root, max_db_size=max_db_size, max_open=max_open)
            _registry[root] = backend
        return backend


def power_of_two_at_least(value: int) -> int:
    return 1 << max(0, value - 1).bit_length()


def set_backend_factory(factory: Callable[[Path], GraphBackend] | None) -> None:
    """Tests: build backends with ``factory`` (e.g. a wrapper that fails); resets the registry."""
    global _factory
    with _registry_lock:
        for backend in _registry.values():
            backend.close_all()
        _registry.clear()
        _factory = factory


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return str(value)
