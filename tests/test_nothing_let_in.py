"""Nothing let in: loopback by default, SQL names validated and values bound, no pickles.

(A YAML ``!!python/object`` tag is refused in ``tests/test_bad_inputs.py``; atomic
LUT and array metadata writes are killed mid-write in ``tests/test_kills.py``.)
"""

from __future__ import annotations

import pickle
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

from volara_assets.storage.graph import GraphStore
from volara_assets.storage.lut import LUT_KEY, load_lut
from volara_assets.tables import NodeTable


def make_dev_command(*overrides: str) -> str:
    """The ``dg dev`` line ``make dev`` would run (``make -n``: nothing is run)."""
    proc = subprocess.run(
        ["make", "-n", "-C", str(REPO), "dev", *overrides],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    [line] = [x for x in proc.stdout.splitlines() if "/dg dev " in x]
    return line


def test_make_dev_binds_the_webserver_to_loopback_unless_told() -> None:
    assert " -h 127.0.0.1 " in make_dev_command()
    assert " -h 0.0.0.0 " in make_dev_command("HOST=0.0.0.0")


def test_dagster_dev_and_webserver_default_to_loopback() -> None:
    # `dg dev` / `dagster dev` without -h pass no host on, so the webserver's default holds.
    from dagster_webserver.cli import dagster_webserver

    [host] = [p for p in dagster_webserver.params if p.name == "host"]
    assert host.default == "127.0.0.1"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prefix": "x; DROP TABLE nodes; --"}, "prefix: 'x; DROP TABLE nodes; --' is not a plain"),
        ({"prefix": "nodes(id)"}, "prefix: 'nodes(id)' is not a plain identifier"),
        ({"node_attrs": {'a" TEXT); --': "str"}}, "node_attrs: 'a\" TEXT); --' is not a plain"),
        ({"edge_attrs": {"s REAL, evil": "float"}}, "edge_attrs: 's REAL, evil' is not a plain"),
        ({"edge_attrs": {"score": "float; DROP"}}, "attribute 'score' has type 'float; DROP'"),
    ],
)
def test_sql_identifiers_are_refused_by_name(tmp_path: Path, kwargs: dict, message: str) -> None:
    url = f"sqlite:///{tmp_path / 'graph.sqlite'}"
    with pytest.raises(ValueError) as info:
        GraphStore(url, **{"edge_attrs": {}, **kwargs})
    assert message in str(info.value)
    assert not (tmp_path / "graph.sqlite").exists()


def test_sql_values_are_bound_never_formatted(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'graph.sqlite'}"
    store = GraphStore(url, node_attrs={"note": "str"}, edge_attrs={"aff": "float"})
    evil = ["'); DROP TABLE nodes; --", 'x" OR 1=1 --', "Robert'); DELETE FROM edges; --"]
    nodes = NodeTable(
        ids=np.array([1, 2, 3], dtype=np.uint64),
        positions=np.zeros((3, 3)),
        sizes=np.array([1, 1, 1]),
        attrs={"note": np.array(evil, dtype=object)},
    )
    store.write_nodes(0, nodes)
    back = store.read_nodes()
    assert back.attrs["note"].tolist() == evil  # stored as text, not run
    assert back.ids.tolist() == [1, 2, 3]
    assert store.count_edges() == 0  # the edges table is still there


def test_a_pickled_lut_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    file = tmp_path / "lut.npz"
    # An .npz whose LUT is an object array holding a payload that runs when unpickled.
    with zipfile.ZipFile(file, "w") as z, z.open(f"{LUT_KEY}.npy", "w") as f:
        np.lib.format.write_array(f, np.array([Payload()], dtype=object), allow_pickle=True)
    assert pickle.loads(pickle.dumps(Payload())) is None and marker.exists()  # it would run
    marker.unlink()

    with pytest.raises(ValueError) as info:
        load_lut(file)
    assert f"{file}: 'fragment_segment_lut' is a pickled object array, which is never loaded" in (
        str(info.value)
    )
    assert not marker.exists()
