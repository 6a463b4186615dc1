"""The code location: ``defs`` built from the pipeline YAML files Dagster should serve.

Pipelines come from ``VOLARA_PIPELINES``: a YAML file, a folder of ``*.yaml``
files, or several of either separated by ``:``. The default is the demo pipeline.
"""

from __future__ import annotations

import os
from pathlib import Path

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


def load_definitions(spec: str | None = None) -> Definitions:
    return build_definitions([PipelineConfig.from_yaml(p) for p in pipeline_files(spec)])


@definitions
def defs() -> Definitions:
    """Built when Dagster loads the code location, not at import: importing this
    module never needs the pipelines' input data to exist."""
    return load_definitions()
