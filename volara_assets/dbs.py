"""The tutorial front door's graph databases: ``SQLite`` and ``PostgreSQL`` fragment graphs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import networkx as nx
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict

from volara_assets.storage.graph import GraphStore
from volara_assets.tables import EdgeTable, NodeTable

__all__ = ["DB", "GraphDB", "PostgreSQL", "SQLite", "as_world_roi"]


def as_world_roi(roi: Any) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``(offset, shape)`` of a world ROI given as a pair or as an object with both attributes.

    Accepts ``(offset, shape)`` tuples, :class:`volara_assets.datasets.WorldRoi` and
    ``funlib.geometry.Roi`` (anything with ``.offset`` and ``.shape``); ``None``
    stays ``None`` (everything).
    """
    if roi is None:
        return None
    if hasattr(roi, "offset") and hasattr(roi, "shape"):
        offset, shape = roi.offset, roi.shape
    else:
        try:
            offset, shape = roi
        except (TypeError, ValueError) as exc:
            raise ValueError(f"roi: expected (offset, shape) in world units, got {roi!r}") from exc
    if offset is None or shape is None or None in tuple(offset) or None in tuple(shape):
        raise ValueError(f"roi: expected a bounded (offset, shape), got {roi!r}")
    offset, shape = tuple(offset), tuple(shape)
    if len(offset) != 3 or len(shape) != 3:
        raise ValueError(f"roi: expected 3 values (z, y, x) in offset and shape, got {roi!r}")
    return offset, shape


class DB(BaseModel):
    """A fragment graph database: one node per fragment, one edge per touching pair.

    Parameters
    ----------
    node_attrs : dict of str to str, optional
        Extra node columns, name -> ``"float"``, ``"int"``, ``"bool"`` or ``"str"``.
        Every node always has ``position`` (world z, y, x) and ``size`` (voxels).
    edge_attrs : dict of str to str, optional
        Edge score columns, name -> ``"float"`` (e.g. ``{"zyx_aff": "float"}``);
        they are the names of ``AffAgglom``'s score groups. Omitted, they are
        read from an existing database.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    node_attrs: dict[str, str] | None = None
    edge_attrs: dict[str, str] | None = None

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of the database."""
        raise NotImplementedError

    @property
    def label(self) -> str:
        """How messages name this database (no password)."""
        return sa.engine.make_url(self.url).render_as_string(hide_password=True)

    def exists(self) -> bool:
        """Whether the database holds a fragment graph (its node table)."""
        store = GraphStore(self.url, edge_attrs={})
        try:
            return sa.inspect(store.engine).has_table(store.nodes.name)
        except sa.exc.OperationalError:
            return False

    def stored_attrs(self) -> tuple[dict[str, str], dict[str, str]] | None:
        """``(node_attrs, edge_attrs)`` as found in the existing tables, or ``None``."""
        if not self.exists():
            return None
        return GraphStore(self.url, edge_attrs={}).stored_attrs()

    def attrs(self) -> tuple[dict[str, str], dict[str, str] | None]:
        """``(node_attrs, edge_attrs)``: as declared, else as stored; edges ``None`` if unknown."""
        stored = self.stored_attrs()
        nodes = self.node_attrs if self.node_attrs is not None else (stored[0] if stored else {})
        edges = self.edge_attrs if self.edge_attrs is not None else (stored[1] if stored else None)
        return dict(nodes), (dict(edges) if edges is not None else None)

    def open(self, mode: Literal["r", "r+", "w"] = "r") -> GraphDB:
        """The graph store.

        Parameters
        ----------
        mode : {"r", "r+", "w"}
            ``"r"`` needs an existing graph; ``"r+"`` creates the tables if
            absent; ``"w"`` drops existing tables first.

        Raises
        ------
        FileNotFoundError
            In mode ``"r"`` when the database holds no fragment graph yet.
        """
        if mode not in ("r", "r+", "w"):
            raise ValueError(f"mode: expected 'r', 'r+' or 'w', got {mode!r}")
        if mode == "r" and not self.exists():
            raise FileNotFoundError(
                f"no fragment graph in {self.label}; run ExtractFrags with this db first"
            )
        node_attrs, edge_attrs = self.attrs()
        store = GraphStore(self.url, node_attrs=node_attrs, edge_attrs=edge_attrs or {})
        if mode == "w":
            store.drop()
        if mode != "r":
            store.create()
        return GraphDB(store)

    def drop(self) -> None:
        """Delete the fragment graph (both tables) if present."""
        if self.exists():
            node_attrs, edge_attrs = self.attrs()
            GraphStore(self.url, node_attrs=node_attrs, edge_attrs=edge_attrs or {}).drop()


class SQLite(DB):
    """A fragment graph in an SQLite file.

    Parameters
    ----------
    path : Path
        The database file (its folder is created), e.g. ``"cells3d.zarr/db.sqlite"``.
    """

    db_type: Literal["sqlite"] = "sqlite"
    path: Path

    @property
    def url(self) -> str:
        return f"sqlite:///{self.path.resolve()}"

    def exists(self) -> bool:
        # Checked first: inspecting a missing file would create it.
        return self.path.is_file() and super().exists()

    def drop(self) -> None:
        """Delete the database file (and its WAL files)."""
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)


class PostgreSQL(DB):
    """A fragment graph in a PostgreSQL database.

    Parameters
    ----------
    host, port, name, user, password
        Where the database is; ``name`` is the database name.
    """

    db_type: Literal["postgresql"] = "postgresql"
    host: str = "localhost"
    port: int | None = None
    name: str = "volara"
    user: str | None = None
    password: str | None = None

    @property
    def url(self) -> str:
        url = sa.engine.URL.create(
            "postgresql",
            username=self.user,
            password=self.password,
            host=self.host,
            port=self.port,
            database=self.name,
        )
        return url.render_as_string(hide_password=False)


class GraphDB:
    """An opened fragment graph (see :meth:`DB.open`).

    Parameters
    ----------
    store : GraphStore
        The SQL store it reads and writes.
    """

    def __init__(self, store: GraphStore) -> None:
        self.store = store

    def __repr__(self) -> str:
        return f"GraphDB({self.store!r})"

    def read_graph(
        self,
        roi: Any = None,
        node_attrs: Sequence[str] | None = None,
        edge_attrs: Sequence[str] | None = None,
    ) -> nx.Graph:
        """The fragments whose centroid lies in ``roi`` and their edges, as a networkx graph.

        Parameters
        ----------
        roi : (offset, shape) or Roi-like, optional
            World box (e.g. ``array.roi``, a ``funlib.geometry.Roi``); ``None``
            reads the whole graph.
        node_attrs, edge_attrs : sequence of str, optional
            Attributes to include; default all.

        Returns
        -------
        networkx.Graph
            Nodes keyed by fragment id carry ``position`` (z, y, x) and ``size``;
            edges carry their scores (e.g. ``zyx_aff``).
        """
        return self.store.read_graph(as_world_roi(roi), node_attrs, edge_attrs)

    def read_nodes(self, roi: Any = None) -> NodeTable:
        """The nodes in ``roi`` as a :class:`~volara_assets.tables.NodeTable`."""
        return self.store.read_nodes(as_world_roi(roi))

    def read_edges(self, roi: Any = None) -> EdgeTable:
        """The edges of the nodes in ``roi`` as an :class:`~volara_assets.tables.EdgeTable`."""
        return self.store.read_edges(as_world_roi(roi))

    def count_nodes(self) -> int:
        return self.store.count_nodes()

    def count_edges(self) -> int:
        return self.store.count_edges()
