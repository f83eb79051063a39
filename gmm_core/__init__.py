"""gmm_core: Gaussian mixture models fitted by EM, on NumPy or fused CUDA kernels.

A drop-in for :class:`sklearn.mixture.GaussianMixture` (same parameters, methods and fitted
attributes) with a ``backend`` choice, plus what a retraining pipeline needs around it: model
files without pickle, component alignment between two fits, and a sequential reference EM.
Imports neither Airflow, MLflow nor Great Expectations, and works with or without CuPy.
"""

from ._device import cupy_unavailable_reason
from ._engine import BACKENDS
from ._warmup import warmup
from .alignment import Alignment, align_components, gaussian_divergence, reorder_components
from .io import ModelFileError, load_model, save_model
from .mixture import GaussianMixture, em_progress
from .selection import GaussianMixtureSelect

__all__ = [
    "BACKENDS",
    "Alignment",
    "GaussianMixture",
    "GaussianMixtureSelect",
    "ModelFileError",
    "align_components",
    "cupy_unavailable_reason",
    "em_progress",
    "gaussian_divergence",
    "load_model",
    "reorder_components",
    "save_model",
    "warmup",
]
__version__ = "0.1.0"
