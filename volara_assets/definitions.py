"""The code location: ``defs`` built from the pipeline YAML files Dagster should serve.

Pipelines come from ``VOLARA_PIPELINES``: a YAML file, a folder of ``*.yaml``
files, or several of either separated by ``:``. The default is the demo pipeline.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dagster import Definitions, definitions, in_process_executor

from .config import PipelineConfig
from .orchestration.assets import PipelineAssets, build_pipeline_assets
from .orchestration.resources import BlockExecutor

DEMO_PIPELINES = Path(__file__).resolve().parent.parent / "pipelines"


def pipeline_files(spec: str | None = None) -> list[Path]:
    """The YAML files named by ``spec`` (or ``VOLARA_PIPELINES``), sorted."""
    spec = spec or os.environ.get("VOLARA_PIPELINES") or str(DEMO_PIPELINES)
    files: list[Path] = []
    for part in spec.split(os.pathsep):
        path = Path(part)
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml")))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"VOLARA_PIPELINES: {part} is neither a YAML file nor a folder")
    return files


def build_definitions(
    configs: list[PipelineConfig], block_executor: BlockExecutor | None = None
) -> Definitions:
    """One code location serving every pipeline in ``configs``.

    ``block_executor`` defaults to :meth:`BlockExecutor.from_env`.
    """
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise ValueError(f"pipeline names must be unique, got {names}")
    built: list[PipelineAssets] = [build_pipeline_assets(c) for c in configs]
    resources: dict = {"block_executor": block_executor or BlockExecutor.from_env()}
    for b in built:
        resources.update(b.resources)
    return Definitions(
        assets=[a for b in built for a in b.assets],
        asset_checks=[c for b in built for c in b.asset_checks],
        sensors=[s for b in built for s in b.sensors],
        schedules=[s for b in built for s in b.schedules],
        jobs=[j for b in built for j in b.jobs],
        resources=resources,
        # Blocks are parallel inside a step (the block executor); a subprocess per
        # step would only add start-up time.
        executor=in_process_executor,
    )


#: Definitions built in this process, by pipeline files' contents and block executor.
_LOADED: dict[tuple[Any, ...], Definitions] = {}


def load_definitions(spec: str | None = None) -> Definitions:
    """``Definitions`` of the pipelines named by ``spec``, built once per process.

    A ``dagster`` CLI run asks for the code location several times (the command,
    the job it reconstructs, the run); with 10^3-10^4 partitions each build cost
    a noticeable share of a short run. Any change to a YAML file's bytes or to
    the executor's environment variables builds anew.
    """
    files = pipeline_files(spec)
    executor = BlockExecutor.from_env()
    key = (
        tuple((str(p.resolve()), p.read_bytes()) for p in files),
        executor.model_dump_json(),
    )
    found = _LOADED.get(key)
    if found is None:
        found = build_definitions([PipelineConfig.from_yaml(p) for p in files], executor)
        _LOADED.clear()  # one code location per process: never grow
        _LOADED[key] = found
    return found


@definitions
def defs() -> Definitions:
    """Built when Dagster loads the code location, not at import: importing this
    module never needs the pipelines' input data to exist."""
    return load_definitions()
