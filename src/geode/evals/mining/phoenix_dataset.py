"""Mined records as a Phoenix dataset whose examples link back to the runs they came from."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from geode.errors import TraceSourceError
from geode.evals.dataset import Dataset


@dataclass(frozen=True)
class PhoenixDatasetLink:
    """A dataset created in Phoenix from mined records."""

    name: str
    dataset_id: str
    version_id: str
    examples: int
    linked_spans: int
    """Examples whose ``span_id`` links back to the run they were mined from."""
    url: str


def upload_to_phoenix(
    dataset: Dataset,
    name: str,
    base_url: str,
    *,
    api_key: str | None = None,
    timeout_s: float = 60.0,
) -> PhoenixDatasetLink:
    """Create (or add a version to) a Phoenix dataset whose examples link back to their runs' spans.

    Each example's input and output are the record's ``inputs`` and ``outputs``; its metadata holds the
    trace id, program version, score, feedback and the mined metadata; its ``span_id`` links it to the
    root span of the run it came from, so Phoenix shows the example's source trace.

    Raises:
        DatasetError: The dataset is empty.
        TraceSourceError: Phoenix is unreachable or refused the upload.
    """
    import httpx

    dataset.require(purpose="upload a dataset to Phoenix")
    url = base_url.rstrip("/")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    try:
        httpx.get(url + "/healthz", timeout=min(timeout_s, 5.0), headers=headers).raise_for_status()
    except httpx.HTTPError as err:
        raise TraceSourceError(
            f"cannot create Phoenix dataset {name!r}: {url} is not reachable ({type(err).__name__})",
            hint="start Phoenix with `geode phoenix`, or leave out --phoenix-dataset",
        ) from err
    from phoenix.client import Client

    examples: list[dict[str, Any]] = []
    for record in dataset.records:
        meta: dict[str, Any] = {"geode_dataset_id": dataset.id, "geode_example_id": record.key}
        for key in ("trace_id", "program_version", "score", "feedback"):
            value = getattr(record, key)
            if value is not None:
                meta[key] = value
        meta.update(json.loads(json.dumps(dict(record.metadata), default=str)))
        example: dict[str, Any] = {
            "input": dict(record.inputs),
            "output": dict(record.outputs),
            "metadata": meta,
        }
        if record.span_id:
            example["span_id"] = record.span_id
        examples.append(example)
    client = Client(base_url=url, api_key=api_key)
    try:
        created = client.datasets.create_dataset(
            name=name,
            examples=examples,
            dataset_description=dataset.description or f"Geode dataset {dataset.id}",
            timeout=max(1, int(timeout_s)),
        )
    except (httpx.HTTPError, ValueError) as err:
        raise TraceSourceError(f"Phoenix at {url} refused dataset {name!r}: {err}") from err
    return PhoenixDatasetLink(
        name=name,
        dataset_id=created.id,
        version_id=created.version_id,
        examples=len(created.examples),
        linked_spans=sum(1 for e in examples if "span_id" in e),
        url=f"{url}/datasets/{created.id}/examples",
    )
