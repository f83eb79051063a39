"""The champion in service: which version it is, and a local copy of its gmm_core files."""

from __future__ import annotations

import errno
import hashlib
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from emflow.config import Settings
from emflow.model.pyfunc_model import DATA_SUBPATH
from emflow.registry import aliases
from emflow.registry.tracking import connect, with_retries

log = logging.getLogger(__name__)


def champion_version(client: Any, settings: Settings) -> str | None:
    """The version the ``champion`` alias points at, or None."""
    return with_retries(
        "read the champion alias",
        lambda: aliases.alias_version(client, settings.model_name, aliases.CHAMPION),
        settings,
    )


def load_champion(settings: Settings) -> tuple[str | None, Path | None]:
    """``(version, local model folder)`` of the champion; ``(None, None)`` without one."""
    client = connect(settings)
    version = champion_version(client, settings)
    if version is None:
        return None, None
    return version, version_model_dir(client, settings, version)


def _intact(model_dir: Path) -> bool:
    """Whether the gmm_core files in ``model_dir`` load (checksums and arrays verified)."""
    import gmm_core

    try:
        gmm_core.load_model(model_dir)
    except (gmm_core.ModelFileError, OSError, ValueError):
        return False
    return True


_PROCESS_CACHE: list[Path] = []


def _process_cache() -> Path:
    """A temporary cache of this process's downloads, removed at exit."""
    if not _PROCESS_CACHE:
        import atexit
        import shutil

        folder = Path(tempfile.mkdtemp(prefix="emflow-registry-cache-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        _PROCESS_CACHE.append(folder)
    return _PROCESS_CACHE[0]


def version_model_dir(client: Any, settings: Settings, version: str) -> Path:
    """Local copy of registry version ``version``'s gmm_core files (downloaded once, cached).

    A cached copy that no longer loads is set aside and downloaded again.
    """
    import mlflow

    # Keyed by the version's source too: a registry recreated under the same URI reuses numbers.
    source = with_retries(
        f"read model version {version}",
        lambda: client.get_model_version(settings.model_name, str(version)).source,
        settings,
    )
    store = hashlib.sha256(settings.tracking_uri.encode()).hexdigest()[:12]
    key = hashlib.sha256(str(source).encode()).hexdigest()[:12]
    cached = (
        settings.home / "cache" / "registry" / store / settings.model_name / f"v{version}-{key}"
    )
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a read-only EMFLOW_HOME (scoring from a registry copy)
        if error.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        cached = _process_cache() / store / settings.model_name / f"v{version}-{key}"
        log.info(
            "%s is not writable (%s); caching v%s in %s", error.filename, error, version, cached
        )
    if (cached / "model.json").exists():
        if _intact(cached):
            return cached
        # a damaged copy (disk trouble, an edit by hand) would fail every later retrain:
        # keep it aside for inspection and fetch the version from the store again
        aside = cached.with_name(f"{cached.name}.damaged-{time.time_ns()}")
        cached.rename(aside)
        log.warning(
            "cached copy of v%s failed its checksums; kept as %s, downloading again", version, aside
        )
    cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"v{version}-", dir=cached.parent) as staging:

        def download() -> str:
            return mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{settings.model_name}/{version}",
                dst_path=staging,
                tracking_uri=settings.tracking_uri,
            )

        root = Path(with_retries(f"download model version {version}", download, settings))
        # only the arrays are read (gmm_core.load_model: no pickle, nothing imported): data/gmm,
        # or artifacts/gmm in versions logged before the model carried data only
        gmm_dir = next(
            (
                d
                for d in (root / DATA_SUBPATH, root / "artifacts" / "gmm")
                if (d / "model.json").exists()
            ),
            None,
        )
        if gmm_dir is None:
            raise FileNotFoundError(
                f"registry version {version} of {settings.model_name} has no gmm_core files "
                f"under {DATA_SUBPATH}: it was not logged by emflow.registry.publish.publish"
            )
        if not cached.exists():  # else a concurrent download finished first
            gmm_dir.rename(cached)
    return cached
