"""The LadybugDB backend on real files: idempotent create, bounded open databases, read-only modes, the
statement guard, error classification."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from robosystems.graphs.backend import (
    LadybugBackend,
    QueryRefused,
    QueryTimeout,
    check_parameters,
    check_statement,
    power_of_two_at_least,
)


def test_create_is_idempotent_and_counts_exclude_meta(tmp_path: Path) -> None:
    backend = LadybugBackend(tmp_path)
    backend.create("kg0000000000000001")
    backend.query(
        "kg0000000000000001", "CREATE (:Entity {identifier: 'a'})", None, timeout_ms=5000, max_rows=10, read_only=False
    )
    backend.create("kg0000000000000001")  # a retry after a crash: schema kept, data kept
    info = backend.info("kg0000000000000001")
    assert (info.node_count, info.relationship_count, info.schema_version) == (1, 0, "1")
    assert info.node_labels == ["Entity"] and info.size_bytes > 0
    assert backend.counts("kg0000000000000001") == ({"Entity": 1}, {"RELATES_TO": 0})
    backend.remove("kg0000000000000001")
    assert not backend.exists("kg0000000000000001") and not (tmp_path / "kg0000000000000001").exists()


def test_open_databases_are_bounded_and_reopened_on_demand(tmp_path: Path) -> None:
    backend = LadybugBackend(tmp_path, max_db_size=1 << 32, max_open=2)
    ids = [f"kg{i:016x}" for i in range(5)]
    for graph_id in ids:
        backend.create(graph_id)
        assert len(backend._handles) <= 2
    for _ in range(2):  # round robin over more graphs than may stay open
        for n, graph_id in enumerate(ids):
            out = backend.query(graph_id, "RETURN $n AS n", {"n": n}, timeout_ms=5000, max_rows=1, read_only=False)
            assert out.rows == [{"n": n}]
            assert len(backend._handles) <= 2

    errors: list[BaseException] = []

    def hammer(graph_id: str) -> None:
        try:
            for _ in range(20):
                backend.query(
                    graph_id, "MATCH (m:Meta) RETURN count(m) AS c", None, timeout_ms=5000, max_rows=1, read_only=False
                )
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(g,)) for g in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    backend.close_all()
    assert backend._handles == {}


def test_read_only_modes(tmp_path: Path) -> None:
    backend = LadybugBackend(tmp_path)
    graph_id = "kg00000000000000aa"
    backend.create(graph_id)
    with pytest.raises(QueryRefused) as refused:
        backend.query(
            graph_id,
            "CREATE (:Entity {identifier: 'x'})",
            None,
            timeout_ms=5000,
            max_rows=1,
            read_only=False,
            read_only_transaction=True,
        )
    assert refused.value.kind == "read_only"
    backend.query(graph_id, "CREATE (:Entity {identifier: 'y'})", None, timeout_ms=5000, max_rows=1, read_only=False)
    with pytest.raises(QueryRefused) as frozen:
        backend.query(graph_id, "CREATE (:Entity {identifier: 'z'})", None, timeout_ms=5000, max_rows=1, read_only=True)
    assert frozen.value.kind == "read_only"
    out = backend.query(
        graph_id, "MATCH (e:Entity) RETURN e.identifier AS i", None, timeout_ms=5000, max_rows=5, read_only=True
    )
    assert out.rows == [{"i": "y"}]
    with pytest.raises(QueryTimeout):
        backend.query(
            graph_id,
            "UNWIND range(1, 100000) AS x UNWIND range(1, 100000) AS y RETURN sum(x * y)",
            None,
            timeout_ms=200,
            max_rows=1,
            read_only=True,
        )
    with pytest.raises(QueryRefused) as syntax:
        backend.query(graph_id, "MATCHH (n) RETURN n", None, timeout_ms=5000, max_rows=1, read_only=True)
    assert syntax.value.kind == "syntax"
    assert backend.health(graph_id, read_only=True)


@pytest.mark.parametrize(
    "cypher",
    [
        "MATCH (n) RETURN n",
        "MATCH (n) DETACH DELETE n",
        "RETURN 'COPY x; LOAD y' AS s",
        "MATCH (n) RETURN n.load, n.`use`",
        "CALL show_tables() RETURN *",
        "CALL table_info('Entity') RETURN *",
        "RETURN 1;",
        "CREATE (:Entity {identifier: 'a'})",
        "RETURN 1 // LOAD FROM\n",
        "MATCH (n) /* DROP TABLE */ RETURN n",
    ],
)
def test_guard_allows(cypher: str) -> None:
    check_statement(cypher)


@pytest.mark.parametrize(
    "cypher",
    [
        "COPY Entity FROM '/etc/passwd'",
        "load from '/etc/passwd' return *",
        "RETURN 1; RETURN 2",
        "ATTACH '/tmp/x.lbug' AS x (dbtype lbug)",
        "DETACH x",
        "USE x",
        "CALL threads = 1",
        "CALL current_setting('home_directory') RETURN *",
        "CREATE NODE TABLE T(id INT64, PRIMARY KEY(id))",
        "CREATE REL TABLE R(FROM Entity TO Entity)",
        "DROP TABLE Entity",
        "ALTER TABLE Entity ADD x INT64",
        "BEGIN TRANSACTION",
        "INSTALL httpfs",
        "EXPORT DATABASE '/tmp/out'",
        "IMPORT DATABASE '/tmp/out'",
        "CHECKPOINT",
        "   ",
    ],
)
def test_guard_refuses(cypher: str) -> None:
    with pytest.raises(QueryRefused) as refused:
        check_statement(cypher)
    assert refused.value.kind == "forbidden_statement"


def test_parameter_names_and_sizes() -> None:
    check_parameters({"ok_name": 1, "_x": [1, 2]})
    with pytest.raises(QueryRefused):
        check_parameters({"bad name": 1})
    assert power_of_two_at_least(2048 * 1024**3) == 1 << 41
    assert power_of_two_at_least(1000) == 1024 and power_of_two_at_least(1) == 1
    with pytest.raises(ValueError, match="power of two"):
        LadybugBackend(Path("/tmp"), max_db_size=3 << 30)
