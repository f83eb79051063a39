"""An experimental diag EM pass on Hopper's warp-group MMA: correct, and how fast for n_init=8?

    PYTHONPATH=. python3 benchmarks/probe_wgmma_pass.py [--out build/wgmma_pass.json]

Research, not a strategy the engine uses: issue 14's ``n_init=8`` target (3.2 ms per iteration
on telemetry, 10M x 16, K = 32, diag) is below what ``mma.sync`` can reach (3.36 ms of products
alone, ``benchmarks/probe_wgmma.py``) and above the ``wgmma`` floor (2.32 ms). The pass that
floor assumes is ``benchmarks/wgmma_pass.py``; this probe checks it against NumPy float64 and
times it beside the production ``diag_pass_tc``.

Prints: every statistic's and the log-likelihood's largest difference from NumPy float64 (one
pass, telemetry-shaped data, 200k rows, R = 2 and 8; the production pass beside it), then
telemetry 10M x 16, K = 32, R = 2 and 8: ms per pass of both and of every ``VARIANTS`` row
(median of 5, CUDA events).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.tune_fused import reference_stats, rel  # noqa: E402
from benchmarks.wgmma import timed_ms  # noqa: E402
from benchmarks.wgmma_pass import WgPass  # noqa: E402
from benchmarks.wgmma_pass_rows import RowsPass  # noqa: E402

#: (label, FLUSH, LONG, TURN, SR) of the samples-along-M pass (benchmarks/wgmma_pass_rows.py)
ROWS_VARIANTS: tuple[tuple[str, int, int, int, int], ...] = (
    ("rows flush16", 16, 1, 1, 0),
    ("rows flush16 sr", 16, 1, 1, 1),
    ("rows flush4 sr", 4, 1, 1, 1),
    ("rows no-long sr", 16, 0, 1, 1),
    ("rows flush16 sr no-turns", 16, 1, 0, 1),
)


def production(Xc_dev: Any, params: tuple, strategy: str = "diag_pass_tc") -> tuple[Any, Any]:
    """An engine pass (``diag_pass_tc``, or ``diag_pass_wg``: em_diag_wg.cu, this pass made a
    strategy) on the same centred data: (run, stats-of-last-run)."""
    import cupy as cp

    from gmm_core._cupy import CupyEngine
    from gmm_core._gaussian import Params

    w, means, var = params
    engine = CupyEngine()
    engine.config.wgmma = strategy == "diag_pass_wg"  # diag_pass_tc: the pass without it
    data = engine.prepare(Xc_dev, None, "diag")
    p = Params(cp.asarray(w), cp.asarray(means), cp.asarray(var), cp.asarray(1 / np.sqrt(var)))
    passes = getattr(engine, strategy)
    plans = passes.plans(data, w.shape[0], w.shape[1])
    box: dict[str, Any] = {}

    def run() -> None:
        box["stats"] = passes.accumulate(data, p, plans)

    return run, box


#: (label, warp groups per CTA, PIPE, SKIP, VEC, SOFTMAX1) of the timing table; SKIP variants
#: time what is left when a part is removed (their results are wrong)
VARIANTS: tuple[tuple[str, int, int, int, int, int], ...] = (
    ("serial nwg2", 2, 0, 0, 0, 0),
    ("pipe2 nwg2", 2, 2, 0, 0, 0),
    ("pipe2 nwg4", 4, 2, 0, 0, 0),
    ("warp-specialised nwg1", 1, 3, 0, 0, 0),
    ("warp-specialised nwg2", 2, 3, 0, 0, 0),
    ("warp-specialised nwg2 sm1", 2, 3, 0, 0, 1),
    ("serial nwg2 no softmax", 2, 0, 4, 0, 0),
    ("serial nwg2 no staging", 2, 0, 8, 0, 0),
    ("serial nwg2 staging only", 2, 0, 7, 0, 0),
    ("serial nwg2 loop only", 2, 0, 15, 0, 0),
)


def show(row: dict[str, Any], bad: bool = False) -> None:
    text = " ".join(f"{k}={v:.1e}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
    print("  " + text + ("  FAIL" if bad else ""), flush=True)


def main() -> int:
    import cupy as cp

    from benchmarks.tune_fused import make_case

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--design",
        choices=("cols", "rows", "both"),
        default="both",
        help="components along M (wgmma_pass.py), samples along M (wgmma_pass_rows.py)",
    )
    parser.add_argument("--time-anyway", action="store_true", help="time after a failed check")
    args = parser.parse_args()
    if cp.cuda.Device().compute_capability != "90":
        print("skipped: needs sm_90 (wgmma)")
        return 0
    out: dict[str, Any] = {"correctness": [], "timing": [], "kernels": {}}
    built: dict[tuple[int, ...], WgPass] = {}

    def get(d: int, nwg: int, pipe: int, skip: int, vec: int = 0, sm1: int = 0) -> WgPass:
        key = (d, nwg, pipe, skip, vec, sm1)
        if key not in built:
            wp = built[key] = WgPass(d, nwg, pipe, skip, vec, sm1)
            out["kernels"][str(key)] = {
                "registers": wp.registers,
                "local_bytes": wp.spill,
                "shared_bytes": wp.smem,
                "backend": wp.backend,
            }
            print(
                f"wg_pass D={d} NWG={nwg} PIPE={pipe} SKIP={skip} VEC={vec} SOFTMAX1={sm1}: "
                f"{wp.registers} registers, "
                f"{wp.spill} bytes local, {wp.smem} bytes shared ({wp.backend})",
                flush=True,
            )
        return built[key]

    rows_built: dict[tuple[int, int, int, int], RowsPass] = {}

    def get_rows(flush: int, long: int, turn: int, sr: int) -> RowsPass:
        key = (flush, long, turn, sr)
        if key not in rows_built:
            rp = rows_built[key] = RowsPass(flush, long, turn, sr)
            out["kernels"][f"rows{key}"] = {
                "registers": rp.registers,
                "local_bytes": rp.spill,
                "shared_bytes": rp.smem,
                "backend": rp.backend,
            }
            print(
                f"wg_rows FLUSH={flush} LONG={long} TURN={turn} SR={sr}: {rp.registers} registers, "
                f"{rp.spill} bytes local, {rp.smem} bytes shared ({rp.backend})",
                flush=True,
            )
        return rows_built[key]

    ok = True
    for n, d, k, r in (
        (200_000, 16, 32, 2),
        (200_003, 16, 32, 8),
        (100_000, 16, 20, 3),
        (50_000, 8, 32, 2),
        (40_000, 4, 7, 1),
        (30_000, 12, 32, 5),
    ):
        X, shift, params = make_case(n, d, k, r)
        Xc = (X - shift.astype(np.float32)).astype(np.float32)
        want = reference_stats(Xc, params)
        Xd = cp.asarray(Xc)
        shapes = (
            ((2, 0, 0, 0), (2, 2, 0, 0), (2, 3, 0, 0), (1, 3, 0, 0), (2, 3, 0, 1))
            if d == 16
            else ((2, 3, 0, 0), (1, 0, 0, 0))
        )
        for nwg, pipe, vec, sm1 in shapes if args.design != "rows" else ():
            got = get(d, nwg, pipe, 0, vec, sm1).stats(Xd, params)
            row: dict[str, Any] = {"n": n, "d": d, "k": k, "r": r, "nwg": nwg, "pipe": pipe}
            row.update(vec=vec, sm1=sm1)
            row.update({key: rel(got[key], want[key]) for key in ("nk", "sx", "sxx", "ll")})
            out["correctness"].append(row)
            bad = max(row[key] for key in ("nk", "sx", "sxx", "ll")) > 2e-5
            ok &= not bad
            show(row, bad)
        rows_variants = ROWS_VARIANTS if args.design != "cols" and d == 16 else ()
        for label, flush, long, turn, sr in rows_variants:
            got = get_rows(flush, long, turn, sr).stats(Xd, params)
            row = {"n": n, "d": d, "k": k, "r": r, "impl": label}
            row.update({key: rel(got[key], want[key]) for key in ("nk", "sx", "sxx", "ll")})
            out["correctness"].append(row)
            bad = max(row[key] for key in ("nk", "sx", "sxx", "ll")) > 2e-5
            ok &= not bad
            show(row, bad)
        for strategy in ("diag_pass_tc", "diag_pass_wg"):
            if strategy == "diag_pass_wg" and not (d == 16 and r >= 5 and n >= 1 << 16):
                continue
            run, box = production(Xd, params, strategy)
            run()
            st = box["stats"]
            prow: dict[str, Any] = {"n": n, "d": d, "k": k, "r": r, "impl": strategy}
            for key, got_key in (("nk", "nk"), ("sx", "sx"), ("sxx", "sxx"), ("ll", "loglik")):
                prow[key] = rel(cp.asnumpy(getattr(st, got_key)), want[key])
            out["correctness"].append(prow)
            worst = max(prow[key] for key in ("nk", "sx", "sxx", "ll"))
            bad = strategy == "diag_pass_wg" and worst > 2e-5
            ok &= not bad
            show(prow, bad)
    if not ok and not args.time_anyway:
        print("correctness FAILED: no timing")
        if args.out:
            args.out.write_text(json.dumps(out, indent=1, default=float))
        return 1
    if not ok:
        print("correctness FAILED (over 2e-5 relative): timing anyway (--time-anyway)")
    from benchmarks.bench_gpu import telemetry

    X = telemetry(10_000_000, 16, 32)
    Xc = cp.asarray(X - X.mean(0))
    rng = np.random.default_rng(0)
    for r in (2, 8):
        means = np.stack([cp.asnumpy(Xc[rng.choice(len(X), 32, replace=False)]) for _ in range(r)])
        params = (np.full((r, 32), 1 / 32), means.astype(np.float64), np.full((r, 32, 16), 4.0))
        prun, _ = production(Xc, params)
        trow: dict[str, Any] = {"restarts": r, "diag_pass_tc": timed_ms(prun)}
        if r >= 5:
            wrun, _ = production(Xc, params, "diag_pass_wg")
            trow["diag_pass_wg"] = timed_ms(wrun)
        for label, flush, long, turn, sr in ROWS_VARIANTS if args.design != "cols" else ():
            run, _ = get_rows(flush, long, turn, sr).launch(Xc, params)
            trow[label] = timed_ms(run)
        for label, nwg, pipe, skip, vec, sm1 in VARIANTS if args.design != "rows" else ():
            if skip and r != 8:
                continue
            wp = get(16, nwg, pipe, skip, vec, sm1)
            for bps in (1, 2) if nwg == 1 else (1,):
                run, _ = wp.launch(Xc, params, blocks_per_sm=bps)
                try:
                    trow[f"{label} b{bps}"] = timed_ms(run)
                except Exception as exc:  # e.g. too many resources for 2 CTAs per SM
                    trow[f"{label} b{bps}"] = None
                    print(f"  {label} b{bps}: {type(exc).__name__}: {exc}")
        out["timing"].append(trow)
        for key, v in trow.items():
            shown = v if isinstance(v, int) or v is None else f"{v:.3f} ms"
            print(f"  R={r} {key:36s} {shown}", flush=True)
    if args.out:
        args.out.write_text(json.dumps(out, indent=1, default=float))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
