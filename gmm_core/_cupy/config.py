"""What every pass strategy reads: the device's properties and the engine's launch settings."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .. import _cuda_loader

#: threads per block of the fused kernels (``GMM_NT`` in the sources)
NT = _cuda_loader.THREADS_PER_BLOCK
TC_ENV = "GMM_CORE_TENSOR_CORES"
SMALL_ENV = "GMM_CORE_SMALL_KERNEL"
WGMMA_ENV = "GMM_CORE_WGMMA"
LARGE_K_FUSED_ENV = "GMM_CORE_LARGE_K_FUSED"
LARGE_K_F64_ENV = "GMM_CORE_LARGE_K_F64"
LARGE_K_SPARSE_ENV = "GMM_CORE_LARGE_K_SPARSE"
#: whether the screened large-K pass serves without ``GMM_CORE_LARGE_K_SPARSE`` set (yes: 11.2 /
#: 11.7 ms per iteration at the public fit against the float32 GEMMs' 21.5 / 33.7 on an H100,
#: statistics float64-exact; ``benchmarks/results/gpu_h100_large_k_sparse.json``)
LARGE_K_SPARSE_DEFAULT = True
#: the screened pass's product: "bf16" (bfloat16 operands and values, half the bytes of
#: "tf32", U = 5 * 2^-8) or "tf32" (float32 values, U = 2^-8: a window a fifth as wide, for data
#: whose components sit closer); ``GMM_CORE_LARGE_K_SCREEN``. BF16 by default: 8.30 / 8.76 ms
#: per public iteration against TF32's 9.23 / 9.93 on an H100, both float64-exact
#: (``benchmarks/results/gpu_h100_large_k_sparse_bf16.json``)
LARGE_K_SCREEN_ENV = "GMM_CORE_LARGE_K_SCREEN"
LARGE_K_SCREENS = ("bf16", "tf32", "mma")
LARGE_K_SCREEN_DEFAULT = "bf16"
#: compute capabilities whose float64 runs on tensor cores at half the TF32 rate or better
#: (A100, H100/H200, B200): the large-K pass's float64 E-step pays there and nowhere else
FAST_FLOAT64 = (80, 90, 100)
#: whether the float64 E-step serves without ``GMM_CORE_LARGE_K_F64`` set (no: 30.5 / 39.4 ms
#: per iteration at the public fit against the float32 GEMMs' 22.1 / 33.5 on an H100)
LARGE_K_F64_DEFAULT = False
BUDGET_ENV = "GMM_CORE_GPU_MEMORY_BUDGET"
#: threads per block of ``diag_pass_tc``: 256 (W^T in registers, measured faster) or 128
TC_THREADS = 256
#: shared memory a block may opt into where the device does not say (bytes)
DEFAULT_SMEM_OPTIN = 48 * 1024


def screen_setting() -> str:
    """``GMM_CORE_LARGE_K_SCREEN`` (``LARGE_K_SCREENS``), the default when unset or empty."""
    value = os.environ.get(LARGE_K_SCREEN_ENV, "").strip().lower() or LARGE_K_SCREEN_DEFAULT
    if value not in LARGE_K_SCREENS:
        raise ValueError(
            f"{LARGE_K_SCREEN_ENV}={value!r}: set it to one of {', '.join(LARGE_K_SCREENS)} "
            "(or unset it)"
        )
    return value


def env_flag(name: str, default: bool = True) -> bool:
    """An on/off environment setting.

    Off for 0/false/no/off, on for 1/true/yes/on (any case), ``default`` when unset (or set to
    anything else).
    """
    value = os.environ.get(name, "").strip().lower()
    if value in ("0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    return default


@dataclass
class LaunchConfig:
    """Device properties and launch settings the strategies read at every call.

    One instance is shared by an engine and its strategies, so a setting changed on the engine
    (tests and tuning scripts do) reaches them all. Built from the current device by
    :meth:`for_current_device`; by hand (no GPU needed) to ask which kernels a fit would use.
    """

    #: streaming multiprocessors of the device
    n_sm: int
    #: most shared memory (bytes) one block may opt into
    smem_optin: int
    #: compute capability as an integer (90 for sm_90)
    compute_capability: int
    #: run the fused passes on tensor cores where they apply (needs compute capability >= 80)
    tensor_cores: bool = True
    #: run small problems' device loop as ``diag_em_small``
    small_kernel: bool = True
    #: ``diag_pass`` variant keeping its float64 accumulators in shared memory
    shared_accumulators: bool = False
    #: threads per block of ``diag_pass_tc`` (256, or 128 where 256 do not fit)
    tc_threads: int = TC_THREADS
    #: tuning: samples per statistics thread per tile of ``diag_pass`` (None: 32, 16 shared)
    tile_per_thread: int | None = None
    #: tuning: cap on resident blocks per SM of the persistent grids
    max_blocks_per_sm: int | None = None
    #: full covariance: M-step and pass constants as kernels (``em_full.cu``), else CuPy ops
    full_on_device: bool = True
    #: ``full_pass_tc`` reads U from global memory even where shared memory would hold it
    full_tc_force_global_u: bool = False
    #: 5-8 restarts of float32 diag data with 16 features on Hopper's warp-group MMA
    #: (``diag_pass_wg``, sm_90a) where the device has it; ``GMM_CORE_WGMMA=0`` turns it off
    wgmma: bool = True
    #: many components (the large-K pass) as fused tensor-core kernels (``em_largek_tc.cu``)
    #: up to 256 features instead of cuBLAS float32 GEMMs: as accurate, opt-in
    #: (``GMM_CORE_LARGE_K_FUSED=1``) until it is faster (docs/benchmarks.md, issue 17)
    large_k_fused: bool = False
    #: the large-K pass's log-densities as one cuBLAS float64 GEMM and its statistics as TF32
    #: GEMMs of split features (``em_largek.cu``, ``large_k_f64``), where float64 is fast
    #: (``FAST_FLOAT64``): opt-in (``GMM_CORE_LARGE_K_F64=1``): the most accurate large-K pass,
    #: measured slower than the float32 GEMMs on an H100 (``gpu_h100_large_k_f64.json``)
    large_k_f64: bool = False
    #: the large-K pass with a screened E-step (``large_k_sparse``, ``em_largek_sparse.cu``): a
    #: TF32 product with a proven error bound picks the few components per sample whose
    #: responsibilities count, computed exactly; on unless ``GMM_CORE_LARGE_K_SPARSE=0``
    large_k_sparse: bool = LARGE_K_SPARSE_DEFAULT
    #: its screening product (``LARGE_K_SCREENS``)
    large_k_screen: str = LARGE_K_SCREEN_DEFAULT

    @classmethod
    def for_current_device(
        cls,
        *,
        tensor_cores: bool | None = None,
        small_kernel: bool | None = None,
        shared_accumulators: bool = False,
    ) -> LaunchConfig:
        """The current CUDA device's properties; ``None`` settings from the environment.

        ``tensor_cores`` defaults to ``GMM_CORE_TENSOR_CORES`` (on unless ``0``) and is off
        below compute capability 8.0; ``small_kernel`` defaults to ``GMM_CORE_SMALL_KERNEL``.
        """
        import cupy

        device = cupy.cuda.Device()
        n_sm = device.attributes["MultiProcessorCount"]
        if tensor_cores is None:
            tensor_cores = env_flag(TC_ENV)
        compute_capability = int(device.compute_capability)
        return cls(
            n_sm=n_sm,
            smem_optin=device.attributes.get("MaxSharedMemoryPerBlockOptin", DEFAULT_SMEM_OPTIN),
            compute_capability=compute_capability,
            tensor_cores=bool(tensor_cores) and compute_capability >= 80,
            small_kernel=env_flag(SMALL_ENV) if small_kernel is None else bool(small_kernel),
            shared_accumulators=shared_accumulators,
            wgmma=env_flag(WGMMA_ENV),
            large_k_fused=env_flag(LARGE_K_FUSED_ENV, default=False),
            large_k_f64=env_flag(LARGE_K_F64_ENV, default=LARGE_K_F64_DEFAULT)
            and compute_capability in FAST_FLOAT64,
            large_k_sparse=env_flag(LARGE_K_SPARSE_ENV, default=LARGE_K_SPARSE_DEFAULT),
            large_k_screen=screen_setting(),
        )
