"""Device copies and sums that compile nothing: memcpy, 2-D memcpy and cuBLAS instead of CuPy ops.

Every CuPy array operation is an elementwise or reduction kernel that NVRTC compiles on its first
use in a process (one per operation, dtype combination and number of dimensions; 0.1 s each on
an H200, more for the CUB reductions). A copy of a contiguous array (``a.copy()``,
``ascontiguousarray`` of a strided view) is one of them; these helpers do the same with the
copy engines (``cudaMemcpy2DAsync``) or cuBLAS, on the current stream.
"""

from __future__ import annotations

from typing import Any

import cupy


def duplicate(a: Any) -> Any:
    """A C-contiguous copy of the C-contiguous array ``a`` (one device-to-device memcpy)."""
    if not a.flags.c_contiguous:
        raise ValueError("duplicate() copies C-contiguous arrays only")
    out = cupy.empty_like(a)
    if a.nbytes:
        out.data.copy_from_device_async(a.data, a.nbytes)
    return out


def copy_rows(
    dst: Any, dst_pitch: int, src: Any, src_pitch: int, width: int, height: int, offset: int = 0
) -> None:
    """Copy ``height`` rows of ``width`` bytes between two device buffers (``cudaMemcpy2DAsync``).

    Row ``i`` starts at byte ``i * dst_pitch`` of ``dst`` and at byte ``offset + i * src_pitch``
    of ``src`` (pitches and offsets in bytes; ``dst`` and ``src`` are CuPy arrays, only their
    memory is used).
    """
    if height <= 0 or width <= 0:
        return
    if height == 1:  # one row: the pitches are not used (cudaMemcpy2D still wants them >= width)
        dst_pitch, src_pitch = max(dst_pitch, width), max(src_pitch, width)
    if width > dst_pitch or width > src_pitch:
        raise ValueError(f"rows of {width} bytes do not fit pitches {dst_pitch}, {src_pitch}")
    if offset + (height - 1) * src_pitch + width > src.nbytes or (
        (height - 1) * dst_pitch + width > dst.nbytes
    ):
        raise ValueError("copy_rows() would reach beyond an array")
    runtime = cupy.cuda.runtime
    runtime.memcpy2DAsync(
        dst.data.ptr,
        dst_pitch,
        src.data.ptr + offset,
        src_pitch,
        width,
        height,
        runtime.memcpyDeviceToDevice,
        cupy.cuda.get_current_stream().ptr,
    )


def every_nth_row(X: Any, step: int) -> Any:
    """``X[::step]`` of a C-contiguous 2-D device array as a new C-contiguous array (2-D memcpy)."""
    n, d = X.shape
    out = cupy.empty((-(-n // step), d), dtype=X.dtype)
    row = d * X.dtype.itemsize
    copy_rows(out, row, X, row * step, row, out.shape[0])
    return out


def add_into(total: Any, part: Any) -> None:
    """``total += part`` for 1-D float64 arrays (cuBLAS ``daxpy``)."""
    from cupy import cublas

    cublas.axpy(1.0, part, total)
