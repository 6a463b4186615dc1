"""The SQL fragment graph: node and edge tables with per-block, transactional row sets."""

from __future__ import annotations

import math
import os
import re
import zlib
from collections.abc import Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import sqlalchemy as sa

from volara_assets.tables import EdgeTable, NodeTable

if TYPE_CHECKING:  # imported where used: the pipeline's code location never needs it
    import networkx as nx

__all__ = ["ATTR_TYPES", "GraphStore", "WorldRoi"]

WorldRoi = tuple[Sequence[float], Sequence[float]]
"""``(offset, shape)`` in world units (z, y, x)."""

ATTR_TYPES: dict[str, type[sa.types.TypeEngine]] = {
    "float": sa.Double,
    "int": sa.BigInteger,
    "bool": sa.Boolean,
    "str": sa.Text,
}
"""Attribute type names accepted in config and the SQL type each maps to."""

_EDGE_ATTR_TYPES = ("float", "int", "bool")  # edge attrs are scores: numeric
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# PostgreSQL silently truncates longer identifiers (NAMEDATALEN - 1 bytes).
_MAX_IDENTIFIER = 63
_NODE_COLUMNS = ("id", "z", "y", "x", "size", "block")
_EDGE_COLUMNS = ("u", "v", "block")
# "position" is reserved too: read_graph puts it on every node.
_RESERVED_NODE_NAMES = {*_NODE_COLUMNS, "position"}
_RESERVED_EDGE_NAMES = set(_EDGE_COLUMNS)
_MAX_ID = 2**63 - 1
_SQLITE_BUSY_TIMEOUT_S = 60
_IMMEDIATE = "volara_assets_immediate"


def _check_identifier(name: str, what: str, reserved: AbstractSet[str] = frozenset()) -> str:
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise ValueError(
            f"{what}: {name!r} is not a plain identifier (letters, digits, '_', "
            "not starting with a digit)"
        )
    if len(name) > _MAX_IDENTIFIER:
        raise ValueError(
            f"{what}: {name!r} has {len(name)} characters; at most {_MAX_IDENTIFIER} fit "
            "an SQL identifier (PostgreSQL would truncate it)"
        )
    # SQL column names compare case-insensitively on most backends.
    if name.lower() in reserved:
        raise ValueError(f"{what}: {name!r} is reserved; reserved names are {sorted(reserved)}")
    return name


def _check_attrs(
    attrs: Mapping[str, str], what: str, reserved: AbstractSet[str], allowed: Sequence[str]
) -> dict[str, str]:
    checked: dict[str, str] = {}
    seen: set[str] = set()
    for name, kind in attrs.items():
        _check_identifier(name, what, reserved)
        if name.lower() in seen:
            raise ValueError(f"{what}: {name!r} is given twice (names are case-insensitive)")
        seen.add(name.lower())
        if kind not in allowed:
            raise ValueError(
                f"{what}: attribute {name!r} has type {kind!r}; allowed types are {list(allowed)}"
            )
        checked[name] = kind
    return checked


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _to_sql(values: Any, kind: str, n: int, name: str) -> list[Any]:
    """One column as a Python list for the driver, NaN/None -> NULL."""
    array = np.asarray(values)
    if array.shape != (n,):
        raise ValueError(f"attribute {name!r}: expected shape ({n},), got {array.shape}")
    if kind == "float" and array.dtype.kind in "fiub":
        floats = array.astype(np.float64)
        out = floats.astype(object)
        out[np.isnan(floats)] = None
        return out.tolist()
    if kind in ("int", "bool") and array.dtype.kind in "iub":
        return array.astype(np.int64 if kind == "int" else bool).tolist()
    convert = {"float": float, "int": int, "bool": bool, "str": str}[kind]
    return [None if _is_null(v) else convert(v) for v in array.tolist()]


def _from_sql(column: Sequence[Any], kind: str) -> np.ndarray:
    """One fetched column as an array: floats with NaN for NULL, etc."""
    if kind == "str":
        return np.array(column, dtype=object)
    if kind == "float" or None in column:
        return np.array(column, dtype=np.float64)
    return np.array(column, dtype=np.int64 if kind == "int" else bool)


class GraphStore:
    """Fragment nodes and edges in two SQL tables, written block by block.

    Parameters
    ----------
    url : str
        Any SQLAlchemy URL, e.g. ``"sqlite:///data/demo.db"`` or
        ``"postgresql://host/db"`` (psycopg2 unless the URL names a driver).
        For SQLite files the parent directory is created and every connection
        uses WAL journaling and a 60 s busy timeout, and write transactions
        start with ``BEGIN IMMEDIATE``, so concurrent writers from several
        processes wait rather than fail. On PostgreSQL a block replace takes
        a transaction-scoped advisory lock on (table, block), so writers of
        the same block queue and writers of other blocks run in parallel.
    node_attrs : mapping of str to str, optional
        Extra node columns, name -> type (``"float"``, ``"int"``, ``"bool"``,
        ``"str"``); nullable.
    edge_attrs : mapping of str to str
        Edge score columns, name -> type (``"float"``, ``"int"``, ``"bool"``);
        nullable; read back as float64 with NaN for NULL.
    prefix : str
        Prefix of the table names ``{prefix}nodes`` and ``{prefix}edges``.

    Raises
    ------
    ValueError
        If a name is not a plain identifier or is reserved, or a type is unknown.

    Notes
    -----
    Tables: ``{prefix}nodes(id BIGINT PK, z, y, x FLOAT, size BIGINT,
    block INTEGER indexed, *node_attrs)`` and ``{prefix}edges(u, v BIGINT,
    PK (u, v), block INTEGER indexed, *edge_attrs)``. Ids are uint64 in memory
    and must be below 2**63 (stored as signed BIGINT).

    The engine is created lazily and again after a fork; pickling drops it,
    so a store can be sent to process-pool workers. SQLite WAL needs a local
    filesystem (not NFS).
    """

    def __init__(
        self,
        url: str,
        *,
        node_attrs: Mapping[str, str] | None = None,
        edge_attrs: Mapping[str, str],
        prefix: str = "",
    ) -> None:
        if prefix:
            _check_identifier(prefix, "prefix")
            longest = len(prefix) + len("nodes")
            if longest > _MAX_IDENTIFIER:
                raise ValueError(
                    f"prefix: {prefix!r} makes table names of {longest} characters; at most "
                    f"{_MAX_IDENTIFIER} fit an SQL identifier (a prefix of at most "
                    f"{_MAX_IDENTIFIER - len('nodes')} characters)"
                )
        self.url = str(url)
        self.prefix = prefix
        self.node_attrs = _check_attrs(
            node_attrs or {}, "node_attrs", _RESERVED_NODE_NAMES, tuple(ATTR_TYPES)
        )
        self.edge_attrs = _check_attrs(
            edge_attrs, "edge_attrs", _RESERVED_EDGE_NAMES, _EDGE_ATTR_TYPES
        )
        self._url = sa.engine.make_url(self.url)
        self._metadata = sa.MetaData()
        self.nodes = sa.Table(
            f"{prefix}nodes",
            self._metadata,
            # INTEGER PRIMARY KEY makes the id SQLite's 64-bit rowid (no extra index).
            sa.Column(
                "id",
                sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                primary_key=True,
                autoincrement=False,
            ),
            sa.Column("z", sa.Double, nullable=False),
            sa.Column("y", sa.Double, nullable=False),
            sa.Column("x", sa.Double, nullable=False),
            sa.Column("size", sa.BigInteger, nullable=False),
            sa.Column("block", sa.Integer, nullable=False, index=True),
            *(sa.Column(n, ATTR_TYPES[t](), nullable=True) for n, t in self.node_attrs.items()),
        )
        self.edges = sa.Table(
            f"{prefix}edges",
            self._metadata,
            sa.Column("u", sa.BigInteger, primary_key=True, autoincrement=False),
            sa.Column("v", sa.BigInteger, primary_key=True, autoincrement=False),
            sa.Column("block", sa.Integer, nullable=False, index=True),
            *(sa.Column(n, ATTR_TYPES[t](), nullable=True) for n, t in self.edge_attrs.items()),
        )
        self._engine: sa.Engine | None = None
        self._pid: int | None = None
        self._created = False

    # -- engine, pickling ----------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "node_attrs": self.node_attrs,
            "edge_attrs": self.edge_attrs,
            "prefix": self.prefix,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["url"],
            node_attrs=state["node_attrs"],
            edge_attrs=state["edge_attrs"],
            prefix=state["prefix"],
        )

    def __repr__(self) -> str:
        return (
            f"GraphStore({self._url.render_as_string(hide_password=True)!r}, "
            f"node_attrs={self.node_attrs}, edge_attrs={self.edge_attrs}, prefix={self.prefix!r})"
        )

    @property
    def _is_sqlite(self) -> bool:
        return self._url.get_backend_name() == "sqlite"

    @property
    def engine(self) -> sa.Engine:
        """The SQLAlchemy engine of this process (recreated after a fork)."""
        pid = os.getpid()
        if self._engine is not None and self._pid == pid:
            return self._engine
        if self._engine is not None:
            # Inherited from the parent: leave its connections to the parent.
            self._engine.dispose(close=False)
        self._engine = self._make_engine()
        self._pid = pid
        return self._engine

    def _make_engine(self) -> sa.Engine:
        if not self._is_sqlite:
            return sa.create_engine(with_default_driver(self._url))
        database = self._url.database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(self._url, connect_args={"timeout": _SQLITE_BUSY_TIMEOUT_S})

        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # Take over transaction control from pysqlite (see the "begin" hook).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout = {_SQLITE_BUSY_TIMEOUT_S * 1000}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.close()

        @sa.event.listens_for(engine, "begin")
        def _on_begin(conn: sa.Connection) -> None:
            # A deferred transaction that later writes can fail at once with
            # SQLITE_BUSY; taking the write lock up front makes writers queue.
            immediate = conn.get_execution_options().get(_IMMEDIATE, False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine

    def dispose(self) -> None:
        """Close this process's pooled connections (the store stays usable)."""
        if self._engine is not None and self._pid == os.getpid():
            self._engine.dispose()
        self._engine = None

    @contextmanager
    def _write(self) -> Iterator[sa.Connection]:
        with self.engine.connect() as conn:
            options: dict[str, Any] = {_IMMEDIATE: True}
            if conn.dialect.name == "postgresql":
                # Each statement sees what committed before it started, in
                # particular what the previous holder of a block lock wrote
                # (see _lock); a stricter server default would hide it.
                options["isolation_level"] = "READ COMMITTED"
            conn = conn.execution_options(**options)
            with conn.begin():
                yield conn

    @staticmethod
    def _lock(conn: sa.Connection, name: str, block: int = 0) -> None:
        """Hold a lock on (``name``, ``block``) until the transaction ends (PostgreSQL).

        PostgreSQL lets two transactions delete the same block's rows at once:
        the second waits for the first's row locks, finds the rows gone, deletes
        nothing, then collides with the rows the first inserted (duplicate key).
        A transaction-scoped advisory lock per table and block makes writers of
        one block queue, while other blocks are written in parallel. SQLite
        needs none: a write transaction there already holds the database lock.
        """
        if conn.dialect.name != "postgresql":
            return
        key = zlib.crc32(name.encode())  # stable across processes, unlike hash()
        key -= 2**32 if key >= 2**31 else 0  # the int4 of the two-key form
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(key, int(block))))

    @contextmanager
    def _read(self) -> Iterator[sa.Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    # -- schema ---------------------------------------------------------------
    def create(self) -> None:
        """Create both tables and their indexes if absent; verify existing ones.

        Idempotent and safe to call from many processes at once.

        Raises
        ------
        ValueError
            If a table exists with other columns than configured (names the column).
        """
        for attempt in range(3):
            try:
                with self._write() as conn:
                    # PostgreSQL: one creator at a time (DDL is transactional there).
                    self._lock(conn, f"create {self.nodes.name} {self.edges.name}")
                    self._metadata.create_all(conn, checkfirst=True)
                break
            except (sa.exc.OperationalError, sa.exc.ProgrammingError, sa.exc.IntegrityError):
                # Another process created a table between our check and CREATE.
                if attempt == 2:
                    raise
        with self._read() as conn:
            inspector = sa.inspect(conn)
            for table in (self.nodes, self.edges):
                problem = _column_mismatch(inspector, table)
                if problem is not None:
                    raise ValueError(f"{problem}. Use another prefix or drop the tables.")
        self._created = True

    def _ensure_created(self) -> None:
        if not self._created:
            self.create()

    def drop_mismatched(self, tables: Sequence[str] = ("nodes", "edges")) -> list[str]:
        """Drop those of ``tables`` (``"nodes"``, ``"edges"``) stored with other columns.

        For a step about to rewrite every block of a table anyway, e.g. edges
        made with other score names. Returns the names of the dropped tables.
        """
        dropped = []
        with self._write() as conn:
            inspector = sa.inspect(conn)
            for which in tables:
                table = self.table(which)
                if inspector.has_table(table.name) and _column_mismatch(inspector, table):
                    table.drop(conn)
                    dropped.append(table.name)
        if dropped:
            self._created = False
        return dropped

    def stored_attrs(self) -> tuple[dict[str, str], dict[str, str]] | None:
        """``(node_attrs, edge_attrs)`` of the stored tables, or ``None`` without a node table.

        Attribute types are read back as ``"float"``, ``"int"``, ``"bool"`` or ``"str"``.
        """
        with self._read() as conn:
            inspector = sa.inspect(conn)
            if not inspector.has_table(self.nodes.name):
                return None
            found = []
            for table, fixed in ((self.nodes, _NODE_COLUMNS), (self.edges, _EDGE_COLUMNS)):
                stored = inspector.has_table(table.name)
                columns = inspector.get_columns(table.name) if stored else []
                found.append(
                    {c["name"]: _kind(c["type"]) for c in columns if c["name"] not in fixed}
                )
        return found[0], found[1]

    def table(self, which: str) -> sa.Table:
        """The ``"nodes"`` or ``"edges"`` table."""
        if which not in ("nodes", "edges"):
            raise ValueError(f"table: expected 'nodes' or 'edges', got {which!r}")
        return self.nodes if which == "nodes" else self.edges

    def drop(self) -> None:
        """Drop both tables (if present)."""
        with self._write() as conn:
            self._metadata.drop_all(conn, checkfirst=True)
        self._created = False

    # -- writing ----------------------------------------------------------------
    def write_nodes(self, block: int, nodes: NodeTable) -> None:
        """Replace block ``block``'s nodes with ``nodes``, in one transaction.

        Parameters
        ----------
        block : int
            Index of the block that owns these nodes.
        nodes : NodeTable
            Its ``attrs`` must be configured node attributes (missing ones are
            NULL; NaN and None become NULL).

        Raises
        ------
        ValueError
            On an unknown attribute, an id >= 2**63, a position that is not
            finite (before any write), or an id already stored by another block
            (the transaction is rolled back).
        """
        block = int(block)
        extra = sorted(set(nodes.attrs) - set(self.node_attrs))
        if extra:
            raise ValueError(
                f"write_nodes: unknown node attributes {extra}; configured: {list(self.node_attrs)}"
            )
        n = len(nodes)
        finite = np.isfinite(nodes.positions).all(axis=1)
        if not finite.all():
            i = int(np.argmin(finite))
            raise ValueError(
                f"write_nodes: node positions must be finite; node {int(nodes.ids[i])} of block "
                f"{block} is at {nodes.positions[i].tolist()}"
            )
        columns: dict[str, list[Any]] = {
            "id": _ids_to_sql(nodes.ids, "node id"),
            "z": nodes.positions[:, 0].tolist(),
            "y": nodes.positions[:, 1].tolist(),
            "x": nodes.positions[:, 2].tolist(),
            "size": nodes.sizes.tolist(),
            "block": [block] * n,
        }
        for name, kind in self.node_attrs.items():
            values = nodes.attrs.get(name)
            columns[name] = [None] * n if values is None else _to_sql(values, kind, n, name)
        self._replace_block(self.nodes, block, columns, n)

    def write_edges(self, block: int, edges: EdgeTable) -> None:
        """Replace block ``block``'s edges with ``edges``, in one transaction.

        Parameters
        ----------
        block : int
            Index of the block that owns these edges (each edge has one owner).
        edges : EdgeTable
            Its ``scores`` must be configured edge attributes (missing ones are
            NULL; NaN becomes NULL).

        Raises
        ------
        ValueError
            On an unknown score, an id >= 2**63, or an edge already stored by
            another block (the transaction is rolled back).
        """
        block = int(block)
        extra = sorted(set(edges.scores) - set(self.edge_attrs))
        if extra:
            raise ValueError(
                f"write_edges: unknown edge attributes {extra}; configured: {list(self.edge_attrs)}"
            )
        n = len(edges)
        columns: dict[str, list[Any]] = {
            "u": _ids_to_sql(edges.u, "edge u"),
            "v": _ids_to_sql(edges.v, "edge v"),
            "block": [block] * n,
        }
        for name, kind in self.edge_attrs.items():
            values = edges.scores.get(name)
            columns[name] = [None] * n if values is None else _to_sql(values, kind, n, name)
        self._replace_block(self.edges, block, columns, n)

    def _replace_block(
        self, table: sa.Table, block: int, columns: dict[str, list[Any]], n: int
    ) -> None:
        self._ensure_created()
        try:
            with self._write() as conn:
                self._lock(conn, table.name, block)
                conn.execute(sa.delete(table).where(table.c.block == block))
                if n:
                    _insert_many(conn, table, columns)
        except sa.exc.IntegrityError as exc:
            raise ValueError(
                f"{table.name}: rows of block {block} collide with rows stored by another "
                f"block or with each other (duplicate key) or miss a required value: {exc.orig}"
            ) from exc

    def delete_block(self, block: int) -> None:
        """Delete block ``block``'s nodes and edges in one transaction."""
        block = int(block)
        with self._write() as conn:
            # Always nodes, then edges: a replace holds one of the two, so no cycle.
            self._lock(conn, self.nodes.name, block)
            self._lock(conn, self.edges.name, block)
            conn.execute(sa.delete(self.nodes).where(self.nodes.c.block == block))
            conn.execute(sa.delete(self.edges).where(self.edges.c.block == block))

    # -- reading ----------------------------------------------------------------
    def _roi_filter(self, roi: WorldRoi | None) -> list[sa.ColumnElement[bool]]:
        if roi is None:
            return []
        offset, shape = roi
        if len(offset) != 3 or len(shape) != 3:
            raise ValueError(f"roi: expected (offset, shape) with 3 entries each, got {roi}")
        c = self.nodes.c
        return [
            cond
            for col, o, s in zip((c.z, c.y, c.x), offset, shape, strict=True)
            for cond in (col >= float(o), col < float(o) + float(s))
        ]

    def _select_nodes(
        self, where: list[sa.ColumnElement[bool]], attrs: Sequence[str]
    ) -> NodeTable:
        c = self.nodes.c
        stmt = (
            sa.select(c.id, c.z, c.y, c.x, c.size, *(c[a] for a in attrs))
            .where(*where)
            .order_by(c.id)
        )
        with self._read() as conn:
            rows = _fetchall(conn, stmt)
        if not rows:
            table = NodeTable.empty()
            table.attrs = {a: _from_sql([], self.node_attrs[a]) for a in attrs}
            return table
        cols = list(zip(*rows, strict=True))
        return NodeTable(
            ids=np.array(cols[0], dtype=np.int64).view(np.uint64),
            positions=np.array(cols[1:4], dtype=np.float64).T,
            sizes=np.array(cols[4], dtype=np.int64),
            attrs={a: _from_sql(cols[5 + i], self.node_attrs[a]) for i, a in enumerate(attrs)},
        )

    def _select_edges(
        self, where: list[sa.ColumnElement[bool]], attrs: Sequence[str], join: bool
    ) -> EdgeTable:
        e = self.edges.c
        stmt = sa.select(e.u, e.v, *(e[a] for a in attrs))
        if join:
            stmt = stmt.select_from(self.edges.join(self.nodes, e.u == self.nodes.c.id))
        stmt = stmt.where(*where).order_by(e.u, e.v)
        with self._read() as conn:
            rows = _fetchall(conn, stmt)
        if not rows:
            return EdgeTable.empty(list(attrs))
        cols = list(zip(*rows, strict=True))
        return EdgeTable(
            u=np.array(cols[0], dtype=np.int64).view(np.uint64),
            v=np.array(cols[1], dtype=np.int64).view(np.uint64),
            scores={a: np.array(cols[2 + i], dtype=np.float64) for i, a in enumerate(attrs)},
        )

    def read_nodes(self, roi: WorldRoi | None = None) -> NodeTable:
        """Nodes whose position lies in ``roi``, sorted by id.

        Parameters
        ----------
        roi : (offset, shape), optional
            World-space box; a node is inside if ``offset <= position <
            offset + shape`` on every axis. ``None`` reads every node.

        Returns
        -------
        NodeTable
            With every configured node attribute in ``attrs``: ``float`` as
            float64 (NaN for NULL), ``int`` as int64 and ``bool`` as bool
            (float64 with NaN if any value is NULL), ``str`` as object.
        """
        return self._select_nodes(self._roi_filter(roi), list(self.node_attrs))

    def read_edges(self, roi: WorldRoi | None = None) -> EdgeTable:
        """Edges whose ``u`` node lies in ``roi``, sorted by ``(u, v)``.

        Parameters
        ----------
        roi : (offset, shape), optional
            World-space box (see :meth:`read_nodes`). With a ROI, edges whose
            ``u`` node is not stored are not returned. ``None`` reads every edge.

        Returns
        -------
        EdgeTable
            One float64 score column per edge attribute, NaN for NULL.
        """
        return self._select_edges(self._roi_filter(roi), list(self.edge_attrs), roi is not None)

    def block_nodes(self, block: int) -> NodeTable:
        """The nodes written by block ``block``, sorted by id."""
        return self._select_nodes([self.nodes.c.block == int(block)], list(self.node_attrs))

    def block_edges(self, block: int) -> EdgeTable:
        """The edges written by block ``block``, sorted by ``(u, v)``."""
        return self._select_edges(
            [self.edges.c.block == int(block)], list(self.edge_attrs), join=False
        )

    def read_graph(
        self,
        roi: WorldRoi | None = None,
        node_attrs: Sequence[str] | None = None,
        edge_attrs: Sequence[str] | None = None,
    ) -> nx.Graph:
        """The nodes in ``roi`` and the edges of their ``u`` ends as a networkx graph.

        Parameters
        ----------
        roi : (offset, shape), optional
            World-space box (see :meth:`read_nodes`); ``None`` reads everything.
        node_attrs, edge_attrs : sequence of str, optional
            Attributes to include; default all configured ones.

        Returns
        -------
        networkx.Graph
            Node keys are Python ints. Nodes carry ``position`` (tuple of z, y, x
            floats), ``size`` and their non-null node attributes. Edges carry
            their non-null scores. An edge whose ``v`` lies outside ``roi``
            also adds ``v``, without attributes.
        """
        node_names = self._pick(node_attrs, self.node_attrs, "node_attrs")
        edge_names = self._pick(edge_attrs, self.edge_attrs, "edge_attrs")
        where = self._roi_filter(roi)
        nodes = self._select_nodes(where, node_names)
        edges = self._select_edges(where, edge_names, roi is not None)
        import networkx as nx

        graph = nx.Graph()
        attr_lists = {a: nodes.attrs[a].tolist() for a in node_names}
        positions = [tuple(p) for p in nodes.positions.tolist()]
        for i, (node, position, size) in enumerate(
            zip(nodes.ids.tolist(), positions, nodes.sizes.tolist(), strict=True)
        ):
            data = {"position": position, "size": size}
            for a, values in attr_lists.items():
                if not _is_null(values[i]):
                    data[a] = values[i]
            graph.add_node(node, **data)
        score_lists = [edges.scores[a].tolist() for a in edge_names]
        for u, v, *scores in zip(edges.u.tolist(), edges.v.tolist(), *score_lists, strict=True):
            graph.add_edge(
                u, v, **{a: s for a, s in zip(edge_names, scores, strict=True) if s == s}
            )
        return graph

    @staticmethod
    def _pick(names: Sequence[str] | None, configured: Mapping[str, str], what: str) -> list[str]:
        if names is None:
            return list(configured)
        unknown = [n for n in names if n not in configured]
        if unknown:
            raise ValueError(
                f"{what}: unknown attributes {unknown}; configured: {list(configured)}"
            )
        return list(names)

    def read_node_ids(self) -> np.ndarray:
        """Every node id, sorted (uint64): one column, for checks that need no more."""
        with self._read() as conn:
            rows = _fetchall(conn, sa.select(self.nodes.c.id).order_by(self.nodes.c.id))
        return np.array([r[0] for r in rows], dtype=np.int64).view(np.uint64)

    def graph_node_ids(self, chunk_size: int = 2**16) -> np.ndarray:
        """Every node id and every edge endpoint, sorted and unique (uint64).

        Streamed: memory for the ids, never for the edges (endpoints missing from
        the node table, rare, come from one anti-join).
        """
        n = self.nodes.c
        e = self.edges.c
        parts = [
            np.concatenate(chunk)
            for chunk in _stream_columns(
                self, sa.select(n.id).order_by(n.id), chunk_size, (np.int64,)
            )
        ]
        orphans = sa.union(
            sa.select(e.u.label("id")).where(e.u.not_in(sa.select(n.id))),
            sa.select(e.v.label("id")).where(e.v.not_in(sa.select(n.id))),
        )
        found = _stream_columns(self, orphans, chunk_size, (np.int64,))
        parts += [np.concatenate(c) for c in found]
        ids = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        return np.unique(ids.view(np.uint64))

    def edges_by_score(
        self,
        weights: Mapping[str, tuple[float, float]],
        edge_per_attr: bool = True,
        chunk_size: int = 2**16,
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Mutex-watershed edges in processing order, ``chunk_size`` rows at a time.

        Yields ``(u, v, score)`` chunks (uint64, uint64, float64) with
        ``score = w * attr + b`` for ``(w, b) = weights[attr]``, SQL NULL (not
        observed) skipped; with ``edge_per_attr`` one row per observed attribute,
        else one row per edge with the sum of its observed attribute scores (left
        to right in ``weights`` order). Order: decreasing ``|score|``, ties by
        ``(u, v)``, then by ``weights`` order: the sequence
        :func:`volara_assets.ops.agglomerate.scored_edges` makes in memory (same
        float64 arithmetic), computed and sorted by the database (SQLite and
        PostgreSQL sort beyond their memory budget in temporary files), and
        fetched with a streaming cursor, so memory does not grow with the edges.

        Raises
        ------
        ValueError
            If a weighted attribute is not an edge attribute of this store.
        """
        missing = [a for a in weights if a not in self.edge_attrs]
        if missing:
            raise ValueError(
                f"weights: attribute {missing[0]!r} is not an edge score; "
                f"available: {sorted(self.edge_attrs)}"
            )
        if not weights:
            return
        e = self.edges.c

        def term(attr: str) -> sa.ColumnElement[float]:
            w, b = weights[attr]
            # Bound as float64 parameters: the database computes what numpy computes.
            return sa.cast(e[attr], sa.Double) * sa.literal(float(w), sa.Double) + sa.literal(
                float(b), sa.Double
            )

        if edge_per_attr:
            parts = [
                sa.select(
                    e.u, e.v, term(a).label("score"), sa.literal(k, sa.Integer).label("k")
                ).where(e[a].is_not(None))
                for k, a in enumerate(weights)
            ]
            rows = sa.union_all(*parts).subquery() if len(parts) > 1 else parts[0].subquery()
            order = (sa.func.abs(rows.c.score).desc(), rows.c.u, rows.c.v, rows.c.k)
        else:
            total = None
            for a in weights:
                t = sa.func.coalesce(term(a), sa.literal(0.0, sa.Double))
                total = t if total is None else total + t
            observed = sa.or_(*(e[a].is_not(None) for a in weights))
            rows = sa.select(e.u, e.v, total.label("score")).where(observed).subquery()
            order = (sa.func.abs(rows.c.score).desc(), rows.c.u, rows.c.v)
        stmt = sa.select(rows.c.u, rows.c.v, rows.c.score).order_by(*order)
        for u, v, score in _stream_columns(
            self, stmt, chunk_size, (np.int64, np.int64, np.float64)
        ):
            yield u.view(np.uint64), v.view(np.uint64), score

    def count_nodes(self) -> int:
        """Number of stored nodes."""
        with self._read() as conn:
            stmt = sa.select(sa.func.count()).select_from(self.nodes)
            return int(conn.execute(stmt).scalar_one())

    def count_edges(self) -> int:
        """Number of stored edges."""
        with self._read() as conn:
            stmt = sa.select(sa.func.count()).select_from(self.edges)
            return int(conn.execute(stmt).scalar_one())

    def rows_per_block(self, table: str, blocks: Sequence[int]) -> dict[int, int]:
        """Rows of ``table`` (``"nodes"`` or ``"edges"``) of each of ``blocks`` (0 if none).

        One grouped query over the range of ``blocks``, whatever their number.
        """
        t = self.table(table)
        counts = {int(b): 0 for b in blocks}
        if not counts:
            return counts
        stmt = (
            sa.select(t.c.block, sa.func.count())
            .where(t.c.block.between(min(counts), max(counts)))
            .group_by(t.c.block)
        )
        with self._read() as conn:
            for block, n in conn.execute(stmt):
                if int(block) in counts:
                    counts[int(block)] = int(n)
        return counts


def _kind(column_type: sa.types.TypeEngine) -> str:
    """The attribute type name (see ``ATTR_TYPES``) of a stored column's SQL type."""
    if isinstance(column_type, sa.Boolean):
        return "bool"
    if isinstance(column_type, sa.Integer):
        return "int"
    if isinstance(column_type, sa.Float | sa.Numeric):
        return "float"
    return "str"


def _column_mismatch(inspector: Any, table: sa.Table) -> str | None:
    """Why the stored ``table`` differs from its configured columns (``None``: it matches)."""
    found = [c["name"] for c in inspector.get_columns(table.name)]
    expected = [c.name for c in table.columns]
    found_lower = {f.lower() for f in found}
    expected_lower = {e.lower() for e in expected}
    for name in expected:
        if name.lower() not in found_lower:
            return f"table {table.name!r} exists without column {name!r}; found columns {found}"
    for name in found:
        if name.lower() not in expected_lower:
            return (
                f"table {table.name!r} has column {name!r} that is not configured; "
                f"expected columns {expected}"
            )
    return None


def with_default_driver(url: sa.URL) -> sa.URL:
    """``url`` with psycopg2 as the driver of a bare ``postgresql://`` URL.

    SQLAlchemy 2.1 defaults ``postgresql://`` to psycopg 3, which is not installed;
    psycopg2 is (dagster-postgres needs it). A URL naming its driver is kept.
    """
    if url.drivername == "postgresql":
        return url.set(drivername="postgresql+psycopg2")
    return url


def _ids_to_sql(ids: np.ndarray, what: str) -> list[int]:
    ids = np.asarray(ids, dtype=np.uint64)
    if ids.size and int(ids.max()) > _MAX_ID:
        raise ValueError(f"{what}: ids must be < 2**63 to fit SQL BIGINT, got {int(ids.max())}")
    return ids.astype(np.int64).tolist()


def _insert_many(conn: sa.Connection, table: sa.Table, columns: dict[str, list[Any]]) -> None:
    """Bulk insert column lists (already plain Python values) into ``table``."""
    if conn.dialect.name != "sqlite":
        # SQLAlchemy batches these into multi-row INSERTs ("insertmanyvalues").
        keys = list(columns)
        rows = [dict(zip(keys, r, strict=True)) for r in zip(*columns.values(), strict=True)]
        conn.execute(sa.insert(table), rows)
        return
    # SQLite: the driver's executemany on tuples is ~3x faster than dict rows
    # through SQLAlchemy. The statement is still compiled from the Table object,
    # and the values are plain int/float/str/None, which need no type processing.
    compiled = sa.insert(table).values({k: sa.bindparam(k) for k in columns}).compile(
        dialect=conn.dialect
    )
    order = compiled.positiontup
    if order is None:  # named paramstyle
        keys = list(columns)
        params: list[Any] = [
            dict(zip(keys, r, strict=True)) for r in zip(*columns.values(), strict=True)
        ]
    else:
        params = list(zip(*(columns[k] for k in order), strict=True))
    conn.exec_driver_sql(compiled.string, params)


def _stream_columns(
    store: GraphStore, stmt: sa.Select | sa.CompoundSelect, chunk_size: int, dtypes: Sequence[Any]
) -> Iterator[list[np.ndarray]]:
    """Rows of ``stmt`` as column arrays of ``dtypes``, ``chunk_size`` rows at a time.

    SQLite: the driver's cursor steps through the result (SQLAlchemy's row
    objects would double the time). Other databases: ``stream_results``, so
    PostgreSQL uses a server-side cursor (psycopg would otherwise fetch every
    row at once).
    """
    with store.engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            compiled = stmt.compile(dialect=conn.dialect)
            params: Any = compiled.params
            if compiled.positiontup is not None:
                params = tuple(params[k] for k in compiled.positiontup)
            cursor = conn.connection.cursor()
            cursor.execute(compiled.string, params)
            fetch = cursor.fetchmany
        else:
            result = conn.execution_options(
                stream_results=True, max_row_buffer=chunk_size
            ).execute(stmt)
            fetch = result.fetchmany
        while True:
            rows = fetch(chunk_size)
            if not rows:
                break
            columns = list(zip(*rows, strict=True))
            yield [np.array(c, dtype=d) for c, d in zip(columns, dtypes, strict=True)]


def _fetchall(conn: sa.Connection, stmt: sa.Select) -> list[tuple[Any, ...]]:
    """Run a compiled select on the DBAPI cursor: the driver's row tuples, nothing more."""
    compiled = stmt.compile(dialect=conn.dialect)
    params: Any = compiled.params
    if compiled.positiontup is not None:
        params = tuple(params[k] for k in compiled.positiontup)
    cursor = conn.connection.cursor()
    try:
        cursor.execute(compiled.string, params)
        return cursor.fetchall()
    finally:
        cursor.close()
