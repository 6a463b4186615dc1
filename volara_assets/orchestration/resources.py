"""Dagster resources: the block executor that runs a step's blocks in parallel."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from typing import Literal

from dagster import ConfigurableResource

from ..config import ExecutorConfig
from ..runtime.executors import open_executor


def _default_kind() -> Literal["serial", "processes", "dask"]:
    kind = os.environ.get("VOLARA_EXECUTOR", "serial")
    if kind not in ("serial", "processes", "dask"):
        raise ValueError(f"VOLARA_EXECUTOR: expected serial, processes or dask, got {kind!r}")
    return kind  # type: ignore[return-value]


class BlockExecutor(ConfigurableResource):
    """Runs the blocks of one step: ``serial``, a local process pool, or Dask.

    Defaults come from the environment (``VOLARA_EXECUTOR``, ``VOLARA_NUM_WORKERS``,
    ``VOLARA_DASK_ADDRESS``) and can be overridden per run in the launchpad.
    """

    kind: Literal["serial", "processes", "dask"] = "serial"
    num_workers: int = 1
    dask_address: str | None = None

    @classmethod
    def from_env(cls) -> BlockExecutor:
        return cls(
            kind=_default_kind(),
            num_workers=int(os.environ.get("VOLARA_NUM_WORKERS", "1")),
            dask_address=os.environ.get("VOLARA_DASK_ADDRESS") or None,
        )

    @property
    def config(self) -> ExecutorConfig:
        return ExecutorConfig(
            kind=self.kind, num_workers=self.num_workers, dask_address=self.dask_address
        )

    @contextmanager
    def open(self) -> Iterator[Executor]:
        with open_executor(self.config) as executor:
            yield executor
