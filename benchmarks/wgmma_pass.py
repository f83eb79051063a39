"""An experimental diag EM pass on Hopper's warp-group MMA (research; the engine does not use it).

``benchmarks/probe_wgmma_pass.py`` checks it against float64 and times it beside the production
``diag_pass_tc``; ``benchmarks/wgmma.py`` holds the instruction wrappers and layouts it is built
on, ``benchmarks/wgmma_pass_kernel.py`` its CUDA source. ``WgPass(d, nwg, pipe, skip, vec, sm1)``
compiles one variant (see the kernel's defines) and returns the production pass's block-partial
statistics of one pass.

One warp group (128 threads) per pair of restarts (M = 64 = two restarts' 32 components), the
CTA's warp groups sharing each 64-sample tile of the data, which all threads stage in shared
memory in two layouts, split for 3xTF32 (hi, lo):
  E-step  logits (64 components x 64 samples) = W^T [x | x^2]^T + c: A = W^T from registers
          (constant), B = the tile, samples' features contiguous; 3 x KT wgmma m64n64k8
  softmax per sample and restart: the 32 components of a restart are two warps' rows, so the
          column max and sum are exchanged between the pair of warps through shared memory
          (a named barrier of 64 threads); responsibilities stay in the accumulator registers
  M-step  statistics (64 x 2D) += R [x | x^2]: A = the responsibilities from the accumulator
          registers (the m64nNk8 accumulator of an 8-sample column block is an A fragment with
          its k index permuted: k q <- sample 2q, k q + 4 <- sample 2q + 1, so the tile's second
          layout stores the samples of each 8-block in that order), B = the tile, features'
          samples contiguous; 3 x 8 wgmma m64n(2D)k8; N_k summed in registers
float32 sums are added to float64 in shared memory every FLUSH tiles (128 samples, as the
production pass); each CTA writes its rows of the production pass's block-partial layout
([R K (1 + 2D)] statistics, [R] log-likelihoods). Not here (the production pass has them): the
exact E-step of components far from the data mean (GMM_TC_GUARD), sample weights, the M-step
in the last block, inactive restarts.

"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.wgmma import REPO, BlockPartialPass, build_module, preamble, wgmma_function
from benchmarks.wgmma_pass_kernel import KERNEL

TS = 64  # samples per tile
NBUF = 3  # tile buffers of the warp-specialised variant (PIPE=3)
FLUSH = 2  # tiles summed in float32 (128 samples)


def source(d: int, nwg: int, pipe: int = 0, skip: int = 0, vec: int = 0, sm1: int = 0) -> str:
    """The pass for ``d`` features and ``nwg`` warp groups (restart pairs) per CTA."""
    shapes = sorted({64, 2 * d})
    defines = (
        f"#define D {d}\n#define NWG {nwg}\n#define TS {TS}\n#define FLUSH {FLUSH}\n"
        f"#define PIPE {pipe}\n#define SKIP {skip}\n#define VEC {vec}\n#define SOFTMAX1 {sm1}\n"
        f"#define NBUF {NBUF}\n"
        f"#define WGMMA_STATS wgmma_rs_n{2 * d}\n"
    )
    tc_cuh = (REPO / "gmm_core" / "cuda" / "tc.cuh").read_text()  # split, ex2, lg2
    tc_cuh = tc_cuh.replace("#pragma once\n", "")  # inlined: NVRTC warns in a main file
    wrappers = "".join(wgmma_function("rs", n) for n in shapes)
    return defines + preamble() + tc_cuh + wrappers + KERNEL


def smem_bytes(d: int, nwg: int, pipe: int = 0) -> int:
    xf = 2 * d
    buf = 2 * (xf // 8) * TS * 8 + 2 * (TS // 8) * xf * 8
    floats = (NBUF if pipe == 3 else 2 if pipe else 1) * buf + 2 * nwg * 4 * 64
    return 4 * floats + 8 * nwg * (xf // 2 + 2) * 128


def weights(means: np.ndarray, var: np.ndarray, w: np.ndarray, n_pairs: int):
    """Log2-unit W (2P, 32, 2D) and c (2P, 32) of diag Gaussians (float32)."""
    r, k, d = means.shape
    l2e = 1.0 / np.log(2.0)
    W = np.zeros((2 * n_pairs, 32, 2 * d))
    c = np.full((2 * n_pairs, 32), -np.inf)
    c[r:] = 0.0  # absent restarts: finite, never written
    prec = 1.0 / var
    W[:r, :k, :d] = means * prec * l2e
    W[:r, :k, d:] = -0.5 * prec * l2e
    c[:r, :k] = (
        np.log(w)
        - 0.5 * d * np.log(2 * np.pi)
        + 0.5 * np.log(prec).sum(2)
        - 0.5 * (means**2 * prec).sum(2)
    ) * l2e
    return W.astype(np.float32), c.astype(np.float32)


class WgPass(BlockPartialPass):
    def __init__(
        self, d: int, nwg: int, pipe: int = 0, skip: int = 0, vec: int = 0, sm1: int = 0
    ) -> None:
        import cupy as cp

        self.d, self.nwg, self.pipe, self.skip = d, nwg, pipe, skip
        self.module, self.backend = build_module("nvrtc", source(d, nwg, pipe, skip, vec, sm1))
        self.kernel = self.module.get_function("wg_pass")
        self.smem = smem_bytes(d, nwg, pipe)
        self.kernel.max_dynamic_shared_size_bytes = self.smem
        self.n_sm = cp.cuda.Device().attributes["MultiProcessorCount"]
        self.registers = int(self.kernel.num_regs)
        self.spill = int(self.kernel.local_size_bytes)

    def launch(self, Xc: Any, params: tuple, *, blocks_per_sm: int = 1) -> tuple[Any, Any]:
        import cupy as cp

        w, means, var = params
        r, k, d = means.shape
        n_pairs = -(-r // 2)
        groups = -(-n_pairs // self.nwg)
        W, c = (cp.asarray(a) for a in weights(means, var, w, n_pairs))
        C = 1 + 2 * d
        pstride = r * k * C + r
        n_tiles = -(-Xc.shape[0] // TS)
        blocks = max(1, min(self.n_sm * blocks_per_sm // groups or 1, n_tiles))
        partial = cp.zeros((blocks, pstride), cp.float64)
        args = (
            Xc,
            np.int64(Xc.shape[0]),
            np.int32(r),
            np.int32(k),
            np.int32(n_pairs),
            W,
            c,
            partial,
            np.int32(pstride),
        )
        return (
            lambda: self.kernel(
                (blocks, groups),
                (128 * self.nwg + (32 if self.pipe == 3 else 0),),
                args,
                shared_mem=self.smem,
            )
        ), partial
