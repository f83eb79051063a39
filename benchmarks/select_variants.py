"""``lks_select``'s compile-time variants and screening chunk sizes, timed and checked.

    SCIPY_ARRAY_API=1 PYTHONPATH=. python3 benchmarks/select_variants.py --out v.json \
        --variants "blocks4=;blocks3=-DLKS_SELECT_BLOCKS=3" --chunks 64,128

``bench_large_k``'s case (1M x 128, K = 1024) at the parameters of a 6-iteration fit from its
start. Per covariance type, variant (``-D`` options of ``em_largek_sparse.cu``) and chunk size
(MB, ``large_k_sparse.CHUNK_BYTES``): the screened pass's median time (5 runs), the
``lks_select`` step's device milliseconds (mean of 3 profiled passes), and the statistics'
largest difference from the first variant's (the variants change the schedule, not the
arithmetic: 0 expected; between screens, the candidates differ by what lies below exp(-T)).
A variant's ``screen:NAME`` picks its screen (``LARGE_K_SCREENS``, default bf16). One table,
printed and written as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_large_k import make_data  # noqa: E402
from benchmarks.large_k_sparse import after_six, profiled  # noqa: E402
from benchmarks.report import environment, log  # noqa: E402


def difference(a: Any, b: Any) -> float:
    """The largest absolute difference of two passes' statistics, relative to each's scale."""
    import cupy

    worst = 0.0
    for name in ("loglik", "nk", "sx", "sxx"):
        x, y = getattr(a, name), getattr(b, name)
        scale = float(cupy.abs(y).max()) or 1.0
        worst = max(worst, float(cupy.abs(x - y).max()) / scale)
    return worst


def case(X: Any, cov: str, variants: list[tuple[str, tuple[str, ...]]], chunks: list[int]) -> Any:
    from gmm_core._cupy import CupyEngine, large_k_sparse

    params = after_six(X, cov)
    engine = CupyEngine()
    engine.config.large_k_sparse = True
    data = engine.prepare(X, None, cov)
    rows, ref = [], None
    default = large_k_sparse.CHUNK_BYTES
    for name, spec in variants:
        # "screen:NAME" picks the screen (LARGE_K_SCREENS); the rest are -D options
        screens = [o.split(":", 1)[1] for o in spec if o.startswith("screen:")]
        options = tuple(o for o in spec if not o.startswith("screen:"))
        engine.config.large_k_screen = screens[-1] if screens else "bf16"
        engine.large_k.options = options
        for mb in chunks:
            large_k_sparse.CHUNK_BYTES = mb << 20
            ms, steps, stats = profiled(engine, data, params)
            ref = stats if ref is None else ref
            row = {
                "variant": name, "options": list(options), "chunk_mb": mb, "pass_ms": ms,
                "select_ms": steps.get("select", 0.0) + steps.get("screen and select", 0.0),
                "screen_ms": steps.get("screen", 0.0),
                "steps_ms": steps, "max_rel_diff": difference(stats, ref),
            }  # fmt: skip
            rows.append(row)
            log(
                f"  {cov:9s} {name:10s} {mb:4d} MB  pass {row['pass_ms']:6.2f} ms  select "
                f"{row['select_ms']:5.2f}  screen {row['screen_ms']:5.2f}  diff "
                f"{row['max_rel_diff']:.1e}"
            )
    large_k_sparse.CHUNK_BYTES = default
    engine.large_k.options = ()
    engine.config.large_k_screen = "bf16"
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--covs", default="spherical,diag")
    parser.add_argument("--variants", default="default=", help="name=-DA=1 -DB=2;name2=...")
    parser.add_argument("--chunks", default="128", help="MB, comma list")
    args = parser.parse_args()
    variants = []
    for item in args.variants.split(";"):
        name, _, opts = item.partition("=")
        variants.append((name, tuple(opts.split())))
    chunks = [int(v) for v in args.chunks.split(",")]
    report: dict[str, Any] = {"environment": environment(), "cases": {}}
    X = make_data()
    for cov in args.covs.split(","):
        report["cases"][cov] = case(X, cov, variants, chunks)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
