"""An evaluation logged to Phoenix as an experiment (best effort: Phoenix never fails an evaluation)."""

from __future__ import annotations

import datetime as _dt
import logging
from typing import TYPE_CHECKING, Any

from geode.evals.dataset import Dataset
from geode.evals.eval_results import EvalResult, PhoenixLink, _jsonable

if TYPE_CHECKING:
    from phoenix.client import Client

__all__ = ["log_to_phoenix"]

# The evaluation's one logger, whichever of its modules logs: users configure "geode.evals.evaluate".
logger = logging.getLogger("geode.evals.evaluate")


def log_to_phoenix(
    result: EvalResult,
    dataset: Dataset,
    base_url: str,
    *,
    experiment_name: str | None = None,
    timeout_s: float = 10.0,
) -> PhoenixLink | None:
    """Log an evaluation to Phoenix as an experiment; ``None`` (and a warning) if that fails.

    The dataset is uploaded (as a new version of the Phoenix dataset ``geode/<name>``), then an
    experiment gets one run per example, with the example's output, timing, error and trace id, and
    one evaluation per run carrying the metric's score and feedback.

    Args:
        result: The evaluation to log.
        dataset: The dataset it ran on (the same records, in the same order).
        base_url: Phoenix's URL, e.g. ``http://127.0.0.1:6006``.
        experiment_name: Default: ``<program>@<version> <metric>``.
        timeout_s: Per-request timeout.
    """
    import httpx

    if len(dataset.records) != len(result.examples):
        logger.warning("Phoenix experiment not logged: the dataset does not match the evaluation")
        return None
    try:
        # A quick reachability check before importing the client, so a down Phoenix costs one short
        # timeout and no import time.
        httpx.get(base_url.rstrip("/") + "/healthz", timeout=min(timeout_s, 3.0)).raise_for_status()
    except Exception as err:
        logger.warning(
            "Phoenix experiment not logged: %s is not reachable (%s)", base_url, type(err).__name__
        )
        return None
    try:
        from phoenix.client import Client
    except ImportError:
        logger.warning("Phoenix experiment not logged: arize-phoenix-client is not installed")
        return None
    try:
        client = Client(base_url=base_url)
        timeout = max(1, int(timeout_s))
        px_dataset, by_index = _upload_dataset(client, dataset, timeout)
        name = experiment_name or f"{result.program}@{result.version or 'base'} {result.metric}"
        experiment = client.experiments.create(
            dataset_id=px_dataset.id,
            dataset_version_id=px_dataset.version_id,
            experiment_name=name,
            experiment_metadata={
                "geode_dataset_id": result.dataset_id,
                "program": result.program,
                "version": result.version,
                "metric": result.metric,
                "model": result.model,
                "split": result.split,
                "score": result.score,
            },
            timeout=timeout,
        )
        _log_runs(client, result, experiment["id"], by_index, timeout)
        url = client.experiments.get_experiment_url(px_dataset.id, experiment["id"])
        return PhoenixLink(dataset_id=px_dataset.id, experiment_id=experiment["id"], url=url)
    except Exception as err:  # Phoenix is optional: warn, never fail the evaluation
        logger.warning("Phoenix experiment not logged (%s: %s)", type(err).__name__, str(err)[:200])
        return None


def _upload_dataset(client: Client, dataset: Dataset, timeout: int) -> tuple[Any, dict[int, str]]:
    """The dataset as a new version of Phoenix's ``geode/<name>``, and its example ids by index."""
    px_dataset = client.datasets.create_dataset(
        name=f"geode/{dataset.name or dataset.id}",
        examples=[
            {
                "input": dict(r.inputs),
                "output": dict(r.outputs),
                "metadata": {"geode_index": i, "geode_example_id": r.key, "geode_dataset_id": dataset.id},
                **({"span_id": r.span_id} if r.span_id else {}),
            }
            for i, r in enumerate(dataset.records)
        ],
        dataset_description=dataset.description or f"Geode dataset {dataset.id}",
        timeout=timeout,
    )
    by_index: dict[int, str] = {}
    for ex in px_dataset.examples:
        meta = ex.get("metadata") or {}
        if isinstance(meta.get("geode_index"), int):
            by_index[meta["geode_index"]] = ex["id"]
    return px_dataset, by_index


def _log_runs(
    client: Client, result: EvalResult, experiment_id: str, by_index: dict[int, str], timeout: int
) -> None:
    """One experiment run per example, and one evaluation per run that did not fail."""
    started = _dt.datetime.fromisoformat(result.started_at)
    for ex in result.examples:
        example_id = by_index.get(ex.index)
        if example_id is None:
            continue
        end = started + _dt.timedelta(seconds=ex.latency_s)
        run = client.experiments.log_run(
            experiment_id=experiment_id,
            dataset_example_id=example_id,
            output=_jsonable(ex.outputs),
            start_time=started,
            end_time=end,
            trace_id=ex.trace_id,
            error=ex.error,
            timeout=timeout,
        )
        if ex.error is None:
            client.experiments.log_evaluation(
                experiment_run_id=run["id"],
                name=result.metric,
                score=ex.score,
                explanation=ex.feedback,
                start_time=end,
                timeout=timeout,
            )
