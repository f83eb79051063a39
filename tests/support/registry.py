"""Helpers for the registry tests: copies of the trained models, an MLflow client on the test
store, the champion alias, a registry with two champions, a version's logged-model folder."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from emflow.config import Settings
from support.lifecycle import cycle


def copy_model(
    trained: dict, key: str, tmp_path: Path, name: str | None = None
) -> tuple[Path, dict[str, Any]]:
    """Copy saved model ``key`` of the ``trained`` fixture to ``tmp_path``; return it and info."""
    source, info = trained[key]
    target = tmp_path / (name or key)
    shutil.copytree(source, target)
    return target, info


def client(settings: Settings):
    """An ``MlflowClient`` on the store of ``settings`` (tracking and registry)."""
    from mlflow import MlflowClient

    return MlflowClient(settings.tracking_uri, registry_uri=settings.tracking_uri)


def champion(settings: Settings):
    """The version the ``champion`` alias points to (``None`` when unset)."""
    from emflow.registry import aliases as registry

    return registry.alias_version(client(settings), settings.model_name, "champion")


def two_champions(settings: Settings, trained: dict, holdout, tmp_path: Path) -> None:
    """v1 (fitted on 120 rows) promoted, then v2 (good) promoted over it."""
    small_dir, small_info = copy_model(trained, "small", tmp_path)
    cycle(settings, small_dir, holdout, "run-1", small_info)
    good_dir, good_info = copy_model(trained, "good", tmp_path)
    *_, second = cycle(settings, good_dir, holdout, "run-2", good_info)
    assert second.promoted and champion(settings) == "2"


def model_files(settings: Settings, version: str) -> Path:
    """The artifact-store folder of registry version ``version`` (where MLmodel lies)."""
    source = client(settings).get_model_version(settings.model_name, version).source
    return next(settings.artifact_root.rglob(f"{source.split('/')[-1]}/artifacts/MLmodel")).parent
