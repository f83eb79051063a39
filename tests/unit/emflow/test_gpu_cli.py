"""``emflow gpu warmup``: compiles through ``gmm_core.warmup()`` where there is one and a GPU;
says why nothing was compiled, and exits 0, where not."""

from __future__ import annotations

import subprocess
import sys

import gmm_core
from emflow.cli import main


def test_without_a_gpu_it_exits_0_and_says_why(capsys, monkeypatch):
    def warmup(shapes=None, *, verbose=False):
        raise RuntimeError("no usable CUDA GPU (cudaErrorNoDevice)")

    monkeypatch.setattr(gmm_core, "warmup", warmup, raising=False)
    assert main(["gpu", "warmup"]) == 0
    err = capsys.readouterr().err
    assert "nothing compiled" in err and "no usable CUDA GPU (cudaErrorNoDevice)" in err


def test_lists_the_kernels_it_compiled(capsys, monkeypatch):
    seen = {}

    def warmup(shapes=None, *, verbose=False):
        seen["verbose"] = verbose
        return ["diag_pass<float, 16, 1>", "m_step_diag<float>"]

    monkeypatch.setattr(gmm_core, "warmup", warmup, raising=False)
    assert main(["gpu", "warmup", "--verbose"]) == 0
    out = capsys.readouterr().out
    assert "compiled 2 kernel(s)" in out and "diag_pass<float, 16, 1>" in out
    assert seen == {"verbose": True}


def test_a_gmm_core_without_warmup_is_not_an_error(capsys, monkeypatch):
    monkeypatch.delattr(gmm_core, "warmup", raising=False)
    assert main(["gpu", "warmup"]) == 0
    assert "no warmup()" in capsys.readouterr().err


def test_on_this_machine_as_an_operator_runs_it():
    """Whatever this machine has (GPU or not), the command answers and exits 0."""
    proc = subprocess.run(
        [sys.executable, "-m", "emflow.cli", "gpu", "warmup"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "compiled" in proc.stdout + proc.stderr
