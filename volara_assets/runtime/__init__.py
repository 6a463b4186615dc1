"""Blockwise execution without Dagster: bound pipeline, block jobs, executors, step loop, checks."""
