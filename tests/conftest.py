"""Shared fixtures for the Dagster-layer tests: one small demo volume and pipelines over it.

The demo volume is generated once per session. Every test that runs the pipeline
writes its outputs (fragments, segments, LUT, SQLite graph) into its own folder,
so tests never see each other's results. Inputs are chunked (4, 16, 16): finer
than a (8, 32, 32) block, so a corrupt input chunk in a corner reaches only the
one block whose read ROI (block + context) covers it.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster import AssetKey, AssetsDefinition, Definitions

from volara_assets.config import PipelineConfig
from volara_assets.demo import write_demo
from volara_assets.orchestration.assets import PipelineAssets, build_pipeline_assets
from volara_assets.orchestration.resources import BlockExecutor
from volara_assets.runtime.executors import shutdown_executors

REPO = Path(__file__).resolve().parent.parent
DEMO_SHAPE = (24, 64, 64)
DEMO_CHUNKS = (4, 16, 16)
BLOCK_SIZE = (8, 32, 32)
CONTEXT = (2, 2, 2)
#: The steps of the pipeline in dependency order (asset names under the pipeline's prefix).
STEPS = ("fragments", "fragment_nodes", "edges", "lut", "segments")


@pytest.fixture(scope="session", autouse=True)
def _shared_executors() -> Iterator[None]:
    """Shut the shared pools and Dask clusters down while pytest's output is still open.

    Left to the interpreter's exit, a Dask cluster logs its shutdown to closed streams.
    """
    yield
    shutdown_executors()


@pytest.fixture(scope="session")
def demo_volume(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo container (raw, labels, mask, affs, affs_noisy), written once per session."""
    path = tmp_path_factory.mktemp("volume") / "demo.zarr"
    write_demo(path, shape=DEMO_SHAPE, seed=0, chunks=DEMO_CHUNKS)
    return path


def copy_volume(volume: Path, dest_dir: Path) -> Path:
    """A private copy of the demo container (for tests that modify the input)."""
    dest = dest_dir / volume.name
    shutil.copytree(volume, dest)
    return dest


def write_pipeline_yaml(
    out_dir: Path,
    volume: Path,
    *,
    name: str = "demo",
    block_size: Sequence[int] = BLOCK_SIZE,
    context: Sequence[int] = CONTEXT,
    blocks_per_partition: Sequence[int] = (1, 1, 1),
    affinities: str = "affs",
    ground_truth: bool = True,
    db_url: str | None = None,
) -> Path:
    """Write ``out_dir/pipeline.yaml`` for ``volume``; every output goes under ``out_dir``.

    The parameters are those of ``pipelines/demo.yaml`` (volara's tutorial) with
    the given grid. The graph goes to ``db_url`` if given (e.g. a PostgreSQL
    database of :class:`PostgresServer`), else to ``out_dir/graph.sqlite``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "name": name,
        "affinities": str(volume / affinities),
        "neighborhood": [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
        "fragments_array": str(out_dir / "out.zarr" / "fragments"),
        "segments_array": str(out_dir / "out.zarr" / "segments"),
        "lut_path": str(out_dir / "out.zarr" / "lut.npz"),
        "db_url": db_url or f"sqlite:///{out_dir / 'graph.sqlite'}",
        "block_size": list(block_size),
        "context": list(context),
        "blocks_per_partition": list(blocks_per_partition),
        "fragments": {"bias": [-0.5, -0.5, -0.5]},
        "edges": {"scores": {"zyx_aff": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}},
        "lut": {"weights": {"zyx_aff": [1.0, -0.5]}},
    }
    if ground_truth:
        doc["ground_truth"] = str(volume / "labels")
    path = out_dir / "pipeline.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@dataclass
class BuiltPipeline:
    """A pipeline's assets and resources, ready for ``dagster.materialize``."""

    config: PipelineConfig
    built: PipelineAssets

    @property
    def assets(self) -> list[Any]:
        """Assets and asset checks, as the code location serves them."""
        return [*self.built.assets, *self.built.asset_checks]

    @property
    def resources(self) -> dict[str, Any]:
        # Serial blocks: deterministic logs, and no worker start-up cost on a tiny volume.
        return {"block_executor": BlockExecutor(kind="serial"), **self.built.resources}

    @property
    def partition_keys(self) -> list[str]:
        return list(self.built.pipeline.grid.partition_keys)

    def key(self, name: str) -> AssetKey:
        return self.built.key(name)

    def keys(self, *names: str) -> list[AssetKey]:
        return [self.key(n) for n in names]

    def asset_def(self, name: str) -> AssetsDefinition:
        key = self.key(name)
        for a in self.built.assets:
            if isinstance(a, AssetsDefinition) and key in a.keys:
                return a
        raise KeyError(key)


def build_pipeline(yaml_path: Path) -> BuiltPipeline:
    """Assets and resources of the pipeline in ``yaml_path`` (via ``build_pipeline_assets``)."""
    config = PipelineConfig.from_yaml(yaml_path)
    return BuiltPipeline(config, build_pipeline_assets(config))


def build_defs(yaml_path: Path) -> Definitions:
    """The code location's ``Definitions`` for ``yaml_path`` (via ``build_definitions``).

    ``volara_assets.definitions`` builds ``defs`` from ``VOLARA_PIPELINES`` (default:
    the demo pipeline under ``data/``, absent in a fresh clone) when first imported,
    so the import happens with ``VOLARA_PIPELINES`` pointing at ``yaml_path``.
    """
    saved = os.environ.get("VOLARA_PIPELINES")
    os.environ["VOLARA_PIPELINES"] = str(yaml_path)
    try:
        from volara_assets.definitions import build_definitions
    finally:
        if saved is None:
            del os.environ["VOLARA_PIPELINES"]
        else:
            os.environ["VOLARA_PIPELINES"] = saved
    return build_definitions([PipelineConfig.from_yaml(yaml_path)])


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_dagster_home(path: Path) -> Path:
    """A fresh ``DAGSTER_HOME`` holding the repository's ``dagster.yaml`` (SQLite, no telemetry)."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "dagster.yaml", path / "dagster.yaml")
    return path


def subprocess_env(pipeline_yaml: Path, dagster_home: Path) -> dict[str, str]:
    """Environment for ``dagster`` / ``dagster-webserver`` subprocesses on one pipeline."""
    env = dict(os.environ)
    env.update(
        VOLARA_PIPELINES=str(pipeline_yaml),
        DAGSTER_HOME=str(dagster_home),
        VOLARA_EXECUTOR="serial",
        VOLARA_NUM_WORKERS="1",
        PYTHONUNBUFFERED="1",
    )
    env.pop("VOLARA_DASK_ADDRESS", None)
    return env


def dagster_bin(name: str) -> str:
    """The ``name`` console script of the venv running the tests."""
    import sys

    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


# ----------------------------------------------------------------------------- PostgreSQL
#
# Tests whose name contains "postgres" run against a real server that the session
# starts from a temporary data directory (initdb, then the postgres binary on
# 127.0.0.1 at a free port and on a Unix socket in that directory) and stops by
# its pid at the end. `make test` installs Debian's `postgresql` when its server
# binaries are missing. As root, the server runs as the unprivileged `postgres`
# user (PostgreSQL refuses to run as root). If it cannot start, those tests fail.

PG_SUPERUSER = "postgres"
PG_START_TIMEOUT_S = 60


def postgres_bindir() -> Path:
    """The directory holding ``initdb`` and ``postgres``: ``$VOLARA_PG_BINDIR``, Debian's
    newest ``/usr/lib/postgresql/<version>/bin``, or ``pg_config --bindir``."""
    candidates: list[Path] = []
    if os.environ.get("VOLARA_PG_BINDIR"):  # when given, the only choice
        candidates.append(Path(os.environ["VOLARA_PG_BINDIR"]))
    else:
        candidates.extend(
            sorted(
                Path("/usr/lib/postgresql").glob("*/bin"),
                key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else -1,
                reverse=True,
            )
        )
    pg_config = shutil.which("pg_config")
    if pg_config and not os.environ.get("VOLARA_PG_BINDIR"):
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if out.returncode == 0:
            candidates.append(Path(out.stdout.strip()))
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "postgres").is_file():
            return bindir
    pytest.fail(
        "PostgreSQL server binaries (initdb, postgres) not found in "
        f"{[str(c) for c in candidates] or '/usr/lib/postgresql/*/bin'}; install Debian's "
        "`postgresql` package (`make postgres`, as root) or set VOLARA_PG_BINDIR"
    )


@dataclass
class PostgresServer:
    """A PostgreSQL server of this test session (trust authentication, superuser ``postgres``)."""

    bindir: Path
    root: Path
    port: int
    process: subprocess.Popen[bytes]
    version: str
    host: str = "127.0.0.1"
    _counter: Iterator[int] = field(default_factory=itertools.count)

    @property
    def pid(self) -> int:
        return self.process.pid

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL of ``database`` over TCP (the Unix socket is in ``root``)."""
        return f"postgresql://{PG_SUPERUSER}@{self.host}:{self.port}/{database}"

    def create_database(self, prefix: str = "test") -> str:
        """A new empty database; returns its name."""
        import psycopg2

        name = f"{prefix}_{next(self._counter)}"
        conn = psycopg2.connect(
            host=self.host, port=self.port, user=PG_SUPERUSER, dbname="postgres"
        )
        try:
            conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return name

    def new_url(self, prefix: str = "test") -> str:
        """SQLAlchemy URL of a new empty database."""
        return self.url(self.create_database(prefix))

    def log(self) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _server_user() -> dict[str, Any]:
    """``Popen`` arguments that drop root privileges to the ``postgres`` system user."""
    if os.geteuid() != 0:
        return {}
    try:
        entry = pwd.getpwnam(PG_SUPERUSER)
    except KeyError:
        pytest.fail(
            "running as root, but there is no `postgres` system user to run the "
            "PostgreSQL server as (Debian's `postgresql` package creates it)"
        )
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _wait_until_ready(server: PostgresServer) -> None:
    import psycopg2

    deadline = time.monotonic() + PG_START_TIMEOUT_S
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(f"postgres exited with code {server.process.returncode}")
        try:
            psycopg2.connect(
                host=server.host, port=server.port, user=PG_SUPERUSER, dbname="postgres",
                connect_timeout=5,
            ).close()
            return
        except psycopg2.OperationalError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres not ready after {PG_START_TIMEOUT_S} s") from None
            time.sleep(0.05)


def stop_postgres(process: subprocess.Popen[bytes]) -> None:
    """Stop the server by its pid: fast shutdown (SIGINT), then immediate (SIGQUIT), then KILL."""
    for sig, wait in ((signal.SIGINT, 30), (signal.SIGQUIT, 10), (signal.SIGKILL, 10)):
        if process.poll() is not None:
            return
        os.kill(process.pid, sig)
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def start_postgres() -> PostgresServer:
    """initdb a temporary data directory and start ``postgres`` on it (see the module notes)."""
    bindir = postgres_bindir()
    as_user = _server_user()
    # Not under pytest's basetemp, which is private to root (0700) while the server
    # runs as another user; /tmp also keeps the socket path short (< 108 bytes).
    tmp = "/tmp" if Path("/tmp").is_dir() else None
    root = Path(tempfile.mkdtemp(prefix="volara-pg-", dir=tmp))
    if as_user:
        os.chown(root, as_user["user"], as_user["group"])
    data = root / "data"
    version = subprocess.run(
        [str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    init = subprocess.run(
        [str(bindir / "initdb"), "-D", str(data), "-U", PG_SUPERUSER, "--auth=trust",
         "-E", "UTF8", "--locale=C", "--no-sync"],
        cwd=root, capture_output=True, text=True, **as_user,
    )
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"initdb failed ({init.returncode}):\n{init.stdout}\n{init.stderr}")
    errors = []
    for _attempt in range(3):  # a free port can be taken between choosing and binding it
        port = free_port()
        log = open(root / "server.log", "ab")  # the server's; closed here once handed over
        process = subprocess.Popen(
            [str(bindir / "postgres"), "-D", str(data), "-p", str(port),
             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={root}",
             # A throw-away cluster: durability buys nothing, speed does.
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=200"],
            cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **as_user,
        )
        log.close()
        server = PostgresServer(bindir, root, port, process, version)
        try:
            _wait_until_ready(server)
            return server
        except RuntimeError as exc:
            errors.append(str(exc))
            stop_postgres(process)
    text = server.log()
    shutil.rmtree(root, ignore_errors=True)
    pytest.fail(f"PostgreSQL server did not start: {errors}\n{text[-3000:]}")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session, stopped by pid at the end."""
    server = start_postgres()
    try:
        yield server
    finally:
        stop_postgres(server.process)
        shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """SQLAlchemy URL of a new empty database on the session's server."""
    return postgres_server.new_url()


BACKENDS = ("sqlite", "postgres")


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh graph database on each backend: an SQLite file, or a PostgreSQL database.

    The server starts only when a ``postgres`` case runs (``-k sqlite`` needs none).
    """
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'graph.sqlite'}"
    return request.getfixturevalue("postgres_url")
