"""Helpers shared by the operations tests: Debian tools, real Prometheus services, PromQL names."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OPS = REPO / "ops"
PROMETHEUS_DIR = OPS / "prometheus"
DASHBOARD_DIR = OPS / "grafana" / "dashboards"
DOCKER_DIR = REPO / "docker"

# binary -> Debian package that provides it
DEBIAN_PACKAGES = {
    "promtool": "prometheus",
    "prometheus": "prometheus",
    "prometheus-pushgateway": "prometheus-pushgateway",
    "docker-compose": "docker-compose",
}


def require_binary(binary: str) -> str:
    """Return the path of ``binary``, installing its Debian package first when missing.

    Skips the calling test, with the apt output as the reason, only when the install fails.
    """
    found = shutil.which(binary)
    if found:
        return found
    package = DEBIAN_PACKAGES[binary]
    if shutil.which("apt-get") is None:
        pytest.skip(f"{binary} is missing and there is no apt-get to install {package}")
    log = []
    for command in (
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", package],
    ):
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=900,
            env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )
        log.append(done.stdout[-400:] + done.stderr[-400:])
        if done.returncode != 0:
            pytest.skip(f"could not install Debian package {package} for {binary}: {log[-1]}")
    found = shutil.which(binary)
    if not found:
        pytest.skip(f"Debian package {package} installed but {binary} is still not on PATH")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (127.0.0.1 only)
        return response.read().decode("utf-8")


def wait_http(url: str, process: subprocess.Popen, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} server exited early:\n{log.read_text()[-2000:]}")
        try:
            http_get(url, timeout=1.0)
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer in {timeout} s:\n{log.read_text()[-2000:]}")


@contextmanager
def running(command: list[str], health_url: str, log: Path) -> Iterator[subprocess.Popen]:
    """Run a server until the block ends; stop it with SIGTERM (then SIGKILL) by its own pid."""
    with open(log, "wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        wait_http(health_url, process, log)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextmanager
def pushgateway(tmp_path: Path) -> Iterator[str]:
    """A real Debian ``prometheus-pushgateway`` on 127.0.0.1; yields its base URL."""
    binary = require_binary("prometheus-pushgateway")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        binary,
        f"--web.listen-address=127.0.0.1:{port}",
        f"--persistence.file={tmp_path / 'pushgateway.data'}",
    ]
    with running(command, f"{url}/-/ready", tmp_path / "pushgateway.log"):
        yield url


@contextmanager
def prometheus(tmp_path: Path, config: dict) -> Iterator[str]:
    """A real Debian ``prometheus`` server on 127.0.0.1 with ``config``; yields its base URL."""
    binary = require_binary("prometheus")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(json.dumps(config))  # JSON is YAML
    command = [
        binary,
        f"--config.file={config_file}",
        f"--web.listen-address=127.0.0.1:{port}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
    ]
    with running(command, f"{url}/-/ready", tmp_path / "prometheus.log"):
        yield url


# ---------------------------------------------------------------------------------------------
# PromQL: which metric names does an expression read?

PROMQL_KEYWORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "inf",
    "nan",
    "atan2",
    "start",
    "end",
}
# aggregation operators and functions are followed by "(" (or by "by"/"without" for aggregations)
PROMQL_AGGREGATIONS = {
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
}
# metrics Prometheus itself makes: the rule engine's alert series and the scrape-health ones
PROMETHEUS_BUILTINS = {
    "ALERTS",
    "ALERTS_FOR_STATE",
    "up",
    "push_time_seconds",
    "push_failure_time_seconds",
    "scrape_duration_seconds",
}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_LABEL_BLOCK = re.compile(r"\{[^{}]*\}")
_GROUPING = re.compile(
    r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE
)
_RANGE = re.compile(r"\[[^\[\]]*\]")
_IDENT = re.compile(r"(?<![\w.:$])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")
_GRAFANA_LABEL_VALUES = re.compile(r"\blabel_values\(\s*([^,()]+?)\s*,\s*\w+\s*\)")
_TEMPLATE = re.compile(r"\$\{?\w+(?::\w+)?\}?")


def promql_metric_names(expr: str) -> set[str]:
    """The metric names an expression selects.

    Grafana's ``$var`` references are neutralised first and its ``label_values(metric, label)``
    variable query counts as reading ``metric``.
    """
    text = _TEMPLATE.sub("x", expr)
    text = _STRING.sub('""', text)
    names: set[str] = set()
    text = _LABEL_BLOCK.sub("", text)
    text = _GRAFANA_LABEL_VALUES.sub(r"\1", text)
    text = _GROUPING.sub("", text)
    text = _RANGE.sub("", text)
    for match in _IDENT.finditer(text):
        name, call = match.group(1), match.group(2)
        if call:  # a function or an aggregation
            continue
        if name.lower() in PROMQL_KEYWORDS or name in PROMQL_AGGREGATIONS:
            continue
        names.add(name)
    return names
