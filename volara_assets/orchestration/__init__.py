"""The Dagster layer: asset factory, IO managers, resources, automation, checks, UI metadata."""
