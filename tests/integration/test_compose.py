"""docker/compose.yaml and docker/gen-env.sh: the compose stack validated by Debian's
docker-compose 1.29 and checked structurally (services, healthchecks, secrets only from the
generated .env, ports on 127.0.0.1, GPU reservation, volumes), and the secret generator. The
images (Dockerfiles, build contexts, install steps, the Postgres init script):
test_docker_images.py."""

from __future__ import annotations

import base64
import os
import re
import stat
import subprocess

import pytest
import yaml
from support.ops import DOCKER_DIR, OPS, REPO, require_binary

COMPOSE = DOCKER_DIR / "compose.yaml"
GEN_ENV = DOCKER_DIR / "gen-env.sh"

SERVICES = {
    "postgres",
    "redis",
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "airflow-worker-gpu",
    "mlflow",
    "prometheus",
    "pushgateway",
    "grafana",
}
ONE_SHOT = {"airflow-init"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|FERNET|TOKEN|_KEY$", re.IGNORECASE)
SECRET_VARIABLES = {
    "POSTGRES_PASSWORD",
    "AIRFLOW_DB_PASSWORD",
    "MLFLOW_DB_PASSWORD",
    "REDIS_PASSWORD",
    "AIRFLOW_FERNET_KEY",
    "AIRFLOW_JWT_SECRET",
    "AIRFLOW_API_SECRET_KEY",
    "AIRFLOW_ADMIN_PASSWORD",
    "GRAFANA_ADMIN_PASSWORD",
    "MLFLOW_ADMIN_PASSWORD",
    "MLFLOW_SERVER_SECRET_KEY",
}
REFERENCE = re.compile(r"\$\{(\w+)(?::?[-?][^}]*)?\}")


def raw_compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())  # resolves the x-* anchors and << merges


def generate_env(path, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(GEN_ENV), "--output", str(path), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def read_env(path) -> dict[str, str]:
    pairs = [
        line.split("=", 1)
        for line in path.read_text().splitlines()
        if line and not line.startswith("#")
    ]
    return dict(pairs)


# ---------------------------------------------------------------------------------------------
# docker/gen-env.sh


def test_gen_env_writes_fresh_private_secrets_and_never_overwrites(tmp_path):
    first, second = tmp_path / "a.env", tmp_path / "b.env"
    assert generate_env(first).returncode == 0
    assert generate_env(second).returncode == 0
    env_a, env_b = read_env(first), read_env(second)
    assert SECRET_VARIABLES <= set(env_a)
    assert stat.S_IMODE(first.stat().st_mode) == 0o600
    for name in SECRET_VARIABLES:
        assert env_a[name] != env_b[name], f"{name} is not random"
        assert len(env_a[name]) >= 20, name
    assert len(base64.urlsafe_b64decode(env_a["AIRFLOW_FERNET_KEY"])) == 32
    for name in SECRET_VARIABLES - {"AIRFLOW_FERNET_KEY"}:
        assert re.fullmatch(r"[A-Za-z0-9]+", env_a[name]), f"{name} is not URL-safe"

    before = first.read_text()
    kept = generate_env(first)
    assert kept.returncode == 0 and "keeping it" in kept.stderr
    assert first.read_text() == before
    assert generate_env(first, "--force").returncode == 0
    assert read_env(first)["POSTGRES_PASSWORD"] != env_a["POSTGRES_PASSWORD"]
    assert generate_env(first, "--bogus").returncode == 2


def test_gen_env_switches_the_gpu_queue_of_an_existing_file_keeping_its_secrets(tmp_path):
    """Deployment review: ``--gpu`` on an existing docker/.env did nothing ("keeping it"), so
    the CPU worker kept the gpu queue beside the GPU worker, and ``--force`` would rotate
    secrets the volumes still hold."""
    env_file = tmp_path / ".env"
    assert generate_env(env_file).returncode == 0
    before = read_env(env_file)
    assert before["CPU_WORKER_QUEUES"] == "default,gpu"
    switched = generate_env(env_file, "--gpu")
    assert switched.returncode == 0 and "keeps its secrets" in switched.stderr
    after = read_env(env_file)
    assert after["CPU_WORKER_QUEUES"] == "default"
    assert {k: v for k, v in after.items() if k != "CPU_WORKER_QUEUES"} == {
        k: v for k, v in before.items() if k != "CPU_WORKER_QUEUES"
    }
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert generate_env(env_file, "--cpu").returncode == 0
    assert read_env(env_file)["CPU_WORKER_QUEUES"] == "default,gpu"


def test_env_file_is_git_ignored_and_not_committed():
    ignored = subprocess.run(["git", "check-ignore", "-q", "docker/.env"], cwd=REPO)
    assert ignored.returncode == 0, "docker/.env must be git-ignored"
    tracked = subprocess.run(
        ["git", "ls-files", "docker"], cwd=REPO, capture_output=True, text=True
    ).stdout.split()
    assert not [name for name in tracked if name.endswith(".env")]


# ---------------------------------------------------------------------------------------------
# the best validator here: Debian's docker-compose (1.29) resolves the file


def compose_config(env_file, *args) -> subprocess.CompletedProcess:
    binary = require_binary("docker-compose")
    return subprocess.run(
        [binary, "--env-file", str(env_file), "-f", str(COMPOSE), *args, "config"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=DOCKER_DIR,
        env={k: v for k, v in os.environ.items() if k not in SECRET_VARIABLES},
    )


@pytest.mark.slow
def test_docker_compose_config_resolves_with_generated_env(tmp_path):
    env_file = tmp_path / "stack.env"
    assert generate_env(env_file).returncode == 0
    secrets = read_env(env_file)

    done = compose_config(env_file, "--profile", "gpu")
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)
    assert set(resolved["services"]) == SERVICES
    api = resolved["services"]["airflow-apiserver"]["environment"]
    assert api["AIRFLOW__CORE__FERNET_KEY"] == secrets["AIRFLOW_FERNET_KEY"]
    assert secrets["AIRFLOW_DB_PASSWORD"] in api["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    # every Airflow component shares the secrets that must match across processes
    airflow = [s for name, s in resolved["services"].items() if name.startswith("airflow-")]
    for key in (
        "AIRFLOW__CORE__FERNET_KEY",
        "AIRFLOW__API_AUTH__JWT_SECRET",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
        "AIRFLOW__CELERY__BROKER_URL",
    ):
        assert len({service["environment"][key] for service in airflow}) == 1, key

    # docker-compose 1.29 lists profiled services too; the profile keeps the GPU worker out of
    # a plain `up` (Compose v2 and 1.29 alike)
    profiled = {name for name, s in resolved["services"].items() if s.get("profiles")}
    assert profiled == {"airflow-worker-gpu"}
    assert resolved["services"]["airflow-worker-gpu"]["profiles"] == ["gpu"]
    assert compose_config(env_file).returncode == 0


def test_compose_refuses_to_start_without_generated_secrets(tmp_path):
    empty = tmp_path / "empty.env"
    empty.write_text("")
    done = compose_config(empty)
    assert done.returncode != 0
    assert "run docker/gen-env.sh" in done.stderr


# ---------------------------------------------------------------------------------------------
# structure of the file itself


def walk_strings(node, path=""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk_strings(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk_strings(value, f"{path}[{index}]")
    elif isinstance(node, str):
        yield path, node


def test_no_literal_secrets_only_env_references():
    compose = raw_compose()
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key) and not key.endswith("_FILE"):
                assert REFERENCE.fullmatch(str(value)), f"{name}.{key} is not a ${{VAR}} reference"
                assert REFERENCE.fullmatch(str(value)).group(1) in SECRET_VARIABLES
    for where, text in walk_strings(compose):
        # credentials inside URLs: user:<password>@host
        for password in re.findall(r"://[^/:@\s]*:([^@\s]+)@", text):
            assert REFERENCE.fullmatch(password), f"literal password in URL at {where}"
        # secret variables are only referenced with ${VAR:?...}: no default can sneak in
        for variable in re.findall(r"\$\{(\w+):-", text):
            assert variable not in SECRET_VARIABLES, f"{variable} has a default at {where}"


def test_every_referenced_secret_is_generated(tmp_path):
    env_file = tmp_path / "stack.env"
    assert generate_env(env_file).returncode == 0
    generated = set(read_env(env_file))
    text = "\n".join(
        line for line in COMPOSE.read_text().splitlines() if not line.lstrip().startswith("#")
    )
    required = {m.group(1) for m in re.finditer(r"\$\{(\w+):\?", text)}
    assert required == SECRET_VARIABLES
    assert required <= generated
    optional = {m.group(1) for m in re.finditer(r"\$\{(\w+):-", text)}
    assert not optional & SECRET_VARIABLES


def test_services_have_healthchecks_and_local_ports():
    services = raw_compose()["services"]
    assert set(services) == SERVICES
    for name, service in services.items():
        if name not in ONE_SHOT:
            test = service.get("healthcheck", {}).get("test")
            assert test and test[0] in {"CMD", "CMD-SHELL"}, f"{name} has no healthcheck"
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond localhost"
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == {"airflow-apiserver", "mlflow", "prometheus", "pushgateway", "grafana"}


def test_gpu_worker_reserves_a_gpu_in_the_gpu_profile():
    services = raw_compose()["services"]
    gpu = services["airflow-worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert gpu["build"]["dockerfile"] == "docker/Dockerfile.gpu-worker"
    assert gpu["command"][-4:] == ["--queues", "gpu", "--concurrency", "1"]
    cpu = services["airflow-worker"]
    assert "profiles" not in cpu and "deploy" not in cpu
    assert "--queues ${CPU_WORKER_QUEUES:-default}" in cpu["command"]
    for name, service in services.items():
        if name != "airflow-worker-gpu":
            assert "profiles" not in service, f"{name} would not start by default"


def test_airflow_and_mlflow_wiring():
    services = raw_compose()["services"]
    env = services["airflow-scheduler"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"].startswith("http://airflow-apiserver:")
    assert env["EMFLOW_PUSHGATEWAY"] == "http://pushgateway:9091"
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert "pools set gpu" in services["airflow-init"]["command"][-1]
    for name in SERVICES - {
        "postgres",
        "redis",
        "airflow-init",
        "mlflow",
        "prometheus",
        "pushgateway",
        "grafana",
    }:
        needs = services[name]["depends_on"]
        assert needs["airflow-init"]["condition"] == "service_completed_successfully", name
    # deployment review: workers report through the execution API (up first), and a running
    # training task finishes on a redeploy (Docker's 10 s default killed it)
    for worker in ("airflow-worker", "airflow-worker-gpu"):
        assert services[worker]["depends_on"]["airflow-apiserver"] == {
            "condition": "service_healthy"
        }, worker
        assert services[worker]["stop_grace_period"] in ("5m", "30m"), worker
    # a bare postgresql:// is psycopg 3 to SQLAlchemy 2, which the lock lacks (workers exited)
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql+psycopg2://")
    hosts = services["mlflow"]["environment"]["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert "localhost:${MLFLOW_PORT:-5000}" in hosts  # the published port, whatever it is
    mlflow = " ".join(services["mlflow"]["command"])
    # the store's password through the environment, not the command line (ps shows that)
    assert "MLFLOW_DB_PASSWORD" not in mlflow
    assert services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith(
        "postgresql+psycopg2://mlflow:${MLFLOW_DB_PASSWORD"
    )
    assert "--artifacts-destination /opt/mlartifacts" in mlflow
    assert any(v.startswith("mlflow-artifacts:") for v in services["mlflow"]["volumes"])
    # the registry chooses what is served: the server asks for a login, the pipeline has one
    assert "--app-name basic-auth" in mlflow
    server_env = services["mlflow"]["environment"]
    assert server_env["MLFLOW_AUTH_ADMIN_PASSWORD"].startswith("${MLFLOW_ADMIN_PASSWORD:?")
    assert server_env["MLFLOW_AUTH_CONFIG_PATH"] == "/etc/mlflow/basic_auth.ini"
    assert "./mlflow/basic_auth.ini:/etc/mlflow/basic_auth.ini:ro" in services["mlflow"]["volumes"]
    assert env["MLFLOW_TRACKING_PASSWORD"].startswith("${MLFLOW_ADMIN_PASSWORD:?")


def test_mounted_repository_files_exist_where_services_expect_them():
    services = raw_compose()["services"]
    mounts = {}
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                assert (DOCKER_DIR / source).resolve().exists(), f"{name}: {source} missing"
                mounts[target] = (DOCKER_DIR / source).resolve()
    assert (mounts["/etc/prometheus"] / "prometheus.yml").is_file()
    prometheus_config = yaml.safe_load((OPS / "prometheus" / "prometheus.yml").read_text())
    for rule_file in prometheus_config["rule_files"]:
        assert (mounts["/etc/prometheus"] / rule_file).is_file()
    assert [
        job["static_configs"][0]["targets"]
        for job in prometheus_config["scrape_configs"]
        if job["job_name"] == "pushgateway"
    ] == [["pushgateway:9091"]]
    provider = yaml.safe_load(
        (OPS / "grafana" / "provisioning" / "dashboards" / "emflow.yml").read_text()
    )
    dashboards_path = provider["providers"][0]["options"]["path"]
    assert sorted(p.name for p in mounts[dashboards_path].glob("*.json")) == [
        "debug.json",
        "executive.json",
        "oncall.json",
    ]
    datasource = yaml.safe_load(
        (OPS / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    init_script = mounts["/docker-entrypoint-initdb.d/10-emflow-databases.sh"]
    assert subprocess.run(["bash", "-n", str(init_script)]).returncode == 0


def test_named_volumes_of_the_airflow_image_mount_on_folders_it_owns():
    """Deployment review: the mlflow-auth volume was mounted on a path the image never created,
    so Docker made it root-owned and the server (uid 50000) could not write its login
    database. Every named volume of a service on the emflow-airflow image mounts on a folder
    the Dockerfile creates and hands to the airflow user (or one the base image owns)."""
    services = raw_compose()["services"]
    dockerfile = (DOCKER_DIR / "Dockerfile.airflow").read_text()
    owned = set()
    for line in dockerfile.replace("\\\n", " ").splitlines():
        if "chown" in line:
            owned.update(word for word in line.split() if word.startswith("/opt/"))
    base_image_paths = ("/opt/airflow",)  # the base image's own, owned by airflow already
    for name, service in services.items():
        if not str(service.get("image", "")).startswith("emflow-airflow"):
            continue
        for volume in service.get("volumes", []):
            source, _, target = str(volume).partition(":")
            target = target.split(":")[0]
            if source.startswith((".", "/")) or target.startswith(base_image_paths):
                continue  # a bind mount of a repository file, or the base image's folders
            assert target in owned, f"{name}: volume {source} on {target}, not created/owned"
