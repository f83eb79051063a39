"""Bookkeeping of ``bench_gpu.py``: the machine it ran on, the targets met, JSON and markdown."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np


def environment() -> dict[str, Any]:
    import cupy as cp
    import sklearn

    props = cp.cuda.runtime.getDeviceProperties(0)
    env = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "device": props["name"].decode() if isinstance(props["name"], bytes) else props["name"],
        "multiprocessors": props["multiProcessorCount"],
        "cuda_driver_api": cp.cuda.runtime.driverGetVersion(),
        "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(),
        "cupy": cp.__version__,
        "numpy": np.__version__,
        "sklearn": sklearn.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
        # the engine's settings from the environment (e.g. GMM_CORE_WGMMA=0: no wgmma pass)
        "gmm_core_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("GMM_CORE_")},
    }
    try:
        import torch

        env["torch"] = torch.__version__
    except ImportError:
        env["torch"] = None
    try:
        env["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
    except Exception:
        env["nvidia_smi"] = None
    return env


TARGETS = {
    ("blobs_500k", "emflow-fused"): ("seconds", 0.010, "500 iterations <= 10 ms"),
    ("telemetry", "emflow-fused"): ("per_iter_ms", 1.0, "<= 1.0 ms per iteration"),
    ("full", "emflow-engine-loop"): ("per_iter_ms", 2.0, "<= 2.0 ms per iteration"),
    ("restarts_n8", "ratio"): ("ratio_vs_one", 3.0, "n_init=8 <= 3x one restart"),
}


def targets(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from benchmarks.public_api import TARGETS as API_TARGETS

    out = []
    for (case, impl, key), limit in API_TARGETS.items():
        row = next((r for r in results if r["case"] == case and r["impl"] == impl), None)
        value = row.get(key) if row else None
        out.append(
            {
                "target": f"{case}: {impl}: {key} <= {limit}",
                "measured": value,
                "met": value is not None and value <= limit,
            }
        )
    for r in results:
        if r.get("api") and ("within" in r or "at_least_as_good" in r):
            ok = r.get("within", True) and r.get("at_least_as_good", True)
            if "label_agreement" in r:
                ok = ok and r["label_agreement"] >= 0.999
            out.append({"target": f"{r['case']}: {r['impl']}", "measured": r, "met": bool(ok)})
    for (case, impl), (key, limit, text) in TARGETS.items():
        row = next(
            (r for r in results if r["case"] == case and r["impl"] == impl and key in r), None
        )
        value = row[key] if row else None
        out.append(
            {
                "target": f"{case}: {text}",
                "measured": value,
                "met": value is not None and value <= limit,
            }
        )
    for r in results:
        if r.get("impl") == "accuracy" and "rel_diff" in r:
            ok = r["rel_diff"] <= 1e-4 and r["label_agreement"] >= 0.999
            out.append(
                {
                    "target": f"{r['case']}: mean log-lik within 1e-4 of sklearn f64, "
                    "labels >= 99.9%",
                    "measured": [r["rel_diff"], r["label_agreement"]],
                    "met": ok,
                }
            )
    return out


def markdown(results: list[dict[str, Any]], env: dict[str, Any], tgts: list[dict[str, Any]]) -> str:
    lines = [
        f"# GPU benchmark ({env['device']}, {env['date']})",
        "",
        f"CuPy {env['cupy']}, torch {env.get('torch')}, CUDA runtime {env['cuda_runtime']}, "
        f"driver {env.get('nvidia_smi')}",
        "",
        "| case | implementation | ms / iteration | total s | compile s | H2D s | note |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        if "per_iter_ms" not in r or r.get("api"):
            continue
        note = "extrapolated" if r.get("extrapolated") else ""
        nan = float("nan")
        lines.append(
            f"| {r['case']} | {r['impl']} | {r['per_iter_ms']:.4f} | {r.get('seconds', nan):.4f} "
            f"| {r.get('compile_s', nan):.2f} | {r.get('h2d_s', nan):.4f} | {note} |"
        )
    api = [r for r in results if r.get("api")]
    if api:
        lines += ["", "Public API (`GaussianMixture(...).fit(X)`):", ""]
        lines += ["| case | what | figures |", "| --- | --- | --- |"]
        for r in api:
            figures = {k: v for k, v in r.items() if k not in ("case", "impl", "api")}
            lines.append(f"| {r['case']} | {r['impl']} | `{json.dumps(figures, default=str)}` |")
    lines += ["", "| target | measured | met |", "| --- | --- | --- |"]
    for t in tgts:
        lines.append(f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def write_results(
    results: list[dict[str, Any]],
    out: Path,
    md_path: Path | None,
    env: dict[str, Any],
    *,
    quick: bool,
    complete: bool,
) -> str:
    """Write the JSON (and markdown) of everything measured so far; return the markdown."""
    from gmm_core import _cuda_loader

    tgts = targets(results)
    result = {
        "environment": env,
        "quick": quick,
        "complete": complete,
        "compile_seconds_total": _cuda_loader.compile_seconds,
        "results": results,
        "targets": tgts,
    }
    out.write_text(json.dumps(result, indent=1, default=float))
    md = markdown(results, env, tgts)
    (md_path or out.with_suffix(".md")).write_text(md)
    return md


def log(msg: str) -> None:
    """Print at once (benchmark logs are read while a device run is going)."""
    print(msg, flush=True)
