"""The promotion rule and the retry helper, without MLflow: fast and exact."""

from __future__ import annotations

import json

import pytest

from emflow.config import Settings
from emflow.model.evaluation import Evaluation
from emflow.model.gate import Decision, decide
from emflow.registry.tracking import TrackingUnavailableError, is_unreachable, with_retries


def _evaluation(challenger=-10.0, champion=-10.0, version="3") -> Evaluation:
    return Evaluation(
        challenger_mean_loglik=challenger,
        champion_mean_loglik=champion,
        champion_version=version,
        n_holdout=100,
        holdout_sha256="x",
        challenger_aic=1.0,
        challenger_bic=2.0,
        weights=[0.5, 0.5],
    )


@pytest.mark.parametrize(
    ("challenger", "cost", "promote", "words"),
    [
        (-10.0, 0.1, True, "promoted"),
        (-10.049, 0.1, True, "promoted"),  # worse, but within the margin
        (-10.0501, 0.1, False, "worse than the champion"),
        (-9.0, 0.5, True, "<= threshold"),  # exactly at the threshold
        (-9.0, 0.5001, False, "components moved too far"),
        (-9.0, float("nan"), False, "alignment to champion v3 failed"),
        (float("-inf"), 0.0, False, "degenerate"),
    ],
)
def test_promotion_rule(challenger, cost, promote, words):
    ok, reason = decide(
        _evaluation(challenger),
        alignment_mean_cost=cost,
        promotion_margin=0.05,
        alignment_threshold=0.5,
    )
    assert ok is promote
    assert words in reason


def test_no_champion_promotes_and_reasons_name_the_numbers():
    ok, reason = decide(
        _evaluation(champion=None, version=None),
        alignment_mean_cost=None,
        promotion_margin=0.05,
        alignment_threshold=0.5,
    )
    assert ok and "no champion yet" in reason and "100 rows" in reason
    ok, reason = decide(
        _evaluation(-11.0, -10.0),
        alignment_mean_cost=0.0,
        promotion_margin=0.05,
        alignment_threshold=0.5,
    )
    assert not ok and "-11.0000" in reason and "-10.0000" in reason and "-1.0000" in reason


def test_evaluation_and_decision_travel_as_json():
    evaluation = _evaluation()
    assert Evaluation.from_dict(json.loads(json.dumps(evaluation.to_dict()))) == evaluation
    decision = Decision(
        promote=False,
        reason="r",
        model_dir="/m",
        champion_version="2",
        permutation=[1, 0],
        alignment_costs=[0.1, 0.2],
        unmatched=[],
    )
    again = Decision.from_dict(json.loads(json.dumps(decision.to_dict())))
    assert again == decision and again.label == "reject"
    assert Decision.from_dict({**decision.to_dict(), "extra": 1}) == decision


def test_unreachable_errors_are_told_apart():
    from mlflow.exceptions import MlflowException

    assert is_unreachable(ConnectionRefusedError("nope"))
    assert is_unreachable(
        MlflowException(
            "API request to http://127.0.0.1:9/api/2.0/mlflow/runs/create failed with exception "
            "HTTPConnectionPool(host='127.0.0.1', port=9): Max retries exceeded"
        )
    )
    wrapped = RuntimeError("outer")
    wrapped.__cause__ = TimeoutError("inner")
    assert is_unreachable(wrapped)
    assert not is_unreachable(MlflowException("Registered Model with name=x not found"))
    assert not is_unreachable(ValueError("bad input"))


def test_with_retries_waits_then_succeeds_or_names_the_fix(tmp_path):
    settings = Settings(
        home=tmp_path, tracking_uri="http://127.0.0.1:9", mlflow_retries=3, mlflow_backoff_s=0.01
    )
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionRefusedError("refused")
        return "done"

    seen = []
    assert with_retries("do it", flaky, settings, on_retry=lambda n, e: seen.append(n)) == "done"
    assert len(calls) == 3 and seen == [1, 2]

    def down():
        raise ConnectionRefusedError("refused")

    with pytest.raises(TrackingUnavailableError) as caught:
        with_retries("register the model version", down, settings, keep_note="Kept at /m.")
    message = str(caught.value)
    assert "register the model version" in message and "3 attempts" in message
    assert "http://127.0.0.1:9" in message and "Kept at /m." in message

    def broken():
        raise KeyError("not a connection problem")

    with pytest.raises(KeyError):  # not a connection problem: raised at once, no retries
        with_retries("x", broken, settings)


def test_a_refused_tracking_server_fails_fast(tmp_path, monkeypatch, capsys):
    """Issue 16.11: ``emflow status`` / ``emflow rollback`` hung ~250 s without output against
    a server refusing connections, even with EMFLOW_MLFLOW_RETRIES=1 (MLflow's own HTTP
    retries ran first)."""
    import time

    from support.ops import free_port

    from emflow.cli import main

    for key in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("EMFLOW_HOME", str(tmp_path))
    monkeypatch.setenv("EMFLOW_MLFLOW_RETRIES", "1")
    started = time.monotonic()
    assert main(["status"]) == 1
    assert main(["rollback", "--version", "1", "--reason", "refused server"]) == 1
    assert time.monotonic() - started < 30
    err = capsys.readouterr().err
    assert err.count("stayed unreachable") == 2 and "EMFLOW_MLFLOW_RETRIES" in err


def test_status_and_rollback_do_not_create_a_registry_where_they_run(tmp_path, monkeypatch, capsys):
    """Issue 16.15: ``emflow status`` created ``./.emflow/mlflow.db`` in whatever folder it ran."""
    from emflow.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EMFLOW_HOME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["status"]) == 0
    assert "no versions registered yet" in capsys.readouterr().out
    assert main(["rollback", "--reason", "nothing to roll back"]) == 2
    assert "no registry at" in capsys.readouterr().err
    assert not (tmp_path / ".emflow").exists()
