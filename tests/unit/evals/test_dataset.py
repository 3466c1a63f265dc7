from __future__ import annotations

import json
from pathlib import Path

import dspy
import pytest

from geode.errors import DatasetError
from geode.evals.dataset import SCHEMA_VERSION, Dataset, Record, load_dataset
from geode.evals.metrics import FEEDBACK_FIELD


def _write(path: Path, *lines: object) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def _qa(n: int, **extra: object) -> list[dict[str, object]]:
    return [
        {"inputs": {"question": f"question number {i}"}, "outputs": {"answer": str(i)}, **extra}
        for i in range(n)
    ]


def test_round_trip_keeps_every_field_and_the_id(tmp_path: Path) -> None:
    records = [
        {
            "inputs": {"question": "Capital of France?", "context": "Paris is..."},
            "outputs": {"answer": "Paris"},
            "trace_id": "t1",
            "span_id": "s1",
            "program_version": "abcd",
            "score": 0.0,
            "feedback": "answered Lyon",
            "split": "heldout",
            "metadata": {"source": "phoenix"},
        },
        {"inputs": {"question": "2+2?", "context": ""}, "labels": {"answer": "4"}},
    ]
    ds = Dataset.from_records(records, name="demo")
    path = ds.save(tmp_path / "d.jsonl")
    header = json.loads(path.read_text().splitlines()[0])
    assert header["schema_version"] == SCHEMA_VERSION and header["name"] == "demo"
    loaded = load_dataset(path)
    assert loaded.id == ds.id
    assert loaded.records == ds.records
    assert loaded.records[1].outputs == {"answer": "4"}  # the 'labels' alias
    assert loaded.name == "demo"


def test_examples_mark_inputs_and_carry_feedback() -> None:
    ds = Dataset.from_records([{"inputs": {"q": "x"}, "outputs": {"a": "y"}, "feedback": "too long"}])
    (ex,) = ds.examples()
    assert isinstance(ex, dspy.Example)
    assert ex.inputs().toDict() == {"q": "x"}
    assert ex.labels()["a"] == "y"
    assert ex[FEEDBACK_FIELD] == "too long"


def test_id_is_a_content_hash() -> None:
    a = Dataset.from_records(_qa(3), name="a")
    b = Dataset.from_records(_qa(3), name="other name")
    changed = _qa(3)
    changed[1]["outputs"] = {"answer": "changed"}
    assert a.id == b.id
    assert a.id != Dataset.from_records(changed).id
    assert a.id.startswith("ds-") and len(a.id) == 19


def test_split_is_deterministic_order_independent_and_keeps_duplicates_together() -> None:
    records = _qa(20)
    records.append(
        {"inputs": {"question": "Question number 3!"}, "outputs": {"answer": "3"}}
    )  # same normalised input
    ds = Dataset.from_records(records)
    s1 = ds.split(heldout_fraction=0.3, seed=0)
    s2 = Dataset.from_records(list(reversed(records))).split(heldout_fraction=0.3, seed=0)
    assert {r.key for r in s1.heldout} == {r.key for r in s2.heldout}
    assert len(s1.train) + len(s1.heldout) == 21
    assert 5 <= len(s1.heldout) <= 8
    held_inputs = {r.input_key for r in s1.heldout}
    assert not held_inputs & {r.input_key for r in s1.train}
    other_seed = ds.split(heldout_fraction=0.3, seed=1)
    assert {r.key for r in other_seed.heldout} != {r.key for r in s1.heldout}


def test_split_honours_explicit_splits() -> None:
    records = [
        *_qa(6),
        {"inputs": {"question": "pinned"}, "outputs": {"answer": "p"}, "split": "heldout"},
        {"inputs": {"question": "pinned train"}, "outputs": {"answer": "t"}, "split": "train"},
    ]
    split = Dataset.from_records(records).split(heldout_fraction=0.5)
    assert "pinned" in {r.inputs["question"] for r in split.heldout}
    assert "pinned train" in {r.inputs["question"] for r in split.train}


def test_empty_and_too_small_datasets_are_refused_with_the_reason(tmp_path: Path) -> None:
    empty = load_dataset(_write(tmp_path / "empty.jsonl", {"schema_version": 1, "name": "nothing"}))
    with pytest.raises(DatasetError, match="has no examples"):
        empty.require(1, purpose="evaluate")
    small = Dataset.from_records(_qa(6))
    with pytest.raises(
        DatasetError, match=r"cannot compile: the dataset \(6 examples\) splits into .* held-out"
    ):
        small.split(heldout_fraction=0.3).require(min_train=4, min_heldout=5)
    with pytest.raises(DatasetError, match="3 example"):
        Dataset.from_records(_qa(3)).require(4, purpose="compile")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"inputs": {"q": "x"}, "outputs": {"a": "y"}, "answer": "y"}', "unknown field\\(s\\) 'answer'"),
        ('{"outputs": {"a": "y"}, "split": "train"}', "'inputs' must be a non-empty JSON object"),
        ('{"inputs": {}, "outputs": {}}', "'inputs' must be a non-empty"),
        ('{"inputs": {"q": "x"}, "outputs": ["y"]}', "'outputs' must be a JSON object"),
        ('{"inputs": {"q": "x"}, "outputs": {"q": "y"}}', "appear in both inputs and outputs"),
        ('{"inputs": {"q": "x"}, "outputs": {}, "labels": {}}', "not both"),
        ('{"inputs": {"q": "x"}, "score": "high"}', "'score' must be a finite number"),
        ('{"inputs": {"q": "x"}, "split": "dev"}', "'split' must be 'train' or 'heldout'"),
        ('{"inputs": {"q": "x"}, "schema_version": 99}', "schema_version 99 is not supported"),
        ('{"inputs": {"geode_x": "x"}}', "reserved prefix"),
        ('{"inputs": {"bad key": "x"}}', "must be identifiers"),
        ('{"inputs": {"q": "x"}, "trace_id": 5}', "'trace_id' must be a string"),
        ('["not", "an", "object"]', "must be a JSON object"),
        ('{"inputs": {"q": "x"}, "outputs": {"a": "y"', "invalid JSON"),
    ],
)
def test_bad_lines_name_the_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = _write(tmp_path / "bad.jsonl", {"inputs": {"q": "ok"}, "outputs": {"a": "ok"}}, line)
    with pytest.raises(DatasetError, match=message) as info:
        load_dataset(path)
    assert f"{path}:2" in str(info.value)


def test_truncated_file_and_other_file_errors(tmp_path: Path) -> None:
    path = tmp_path / "cut.jsonl"
    path.write_text('{"inputs": {"q": "a"}, "outputs": {"a": "b"}}\n{"inputs": {"q": "c"}, "outp')
    with pytest.raises(DatasetError, match="truncated"):
        load_dataset(path)
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "missing.jsonl")
    binary = tmp_path / "model.pkl"
    binary.write_bytes(b"\x80\x04\x95\xff\xfe")
    with pytest.raises(DatasetError, match="not UTF-8"):
        load_dataset(binary)
    header_only_typo = _write(tmp_path / "h.jsonl", {"schema_version": 1, "nmae": "x"})
    with pytest.raises(DatasetError, match="header line has unknown field"):
        load_dataset(header_only_typo)


def test_json_array_files_are_read_too(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps(_qa(2)))
    assert len(load_dataset(path)) == 2


def test_from_examples_requires_declared_inputs() -> None:
    ds = Dataset.from_examples([dspy.Example(q="x", a="y").with_inputs("q")])
    assert ds.records[0] == Record(inputs={"q": "x"}, outputs={"a": "y"})
    with pytest.raises(DatasetError, match="with_inputs"):
        Dataset.from_examples([dspy.Example(q="x", a="y")])


def test_health_report_finds_duplicates_conflicts_near_duplicates_imbalance_and_spread() -> None:
    records = [
        {
            "inputs": {"text": f"review number {i} of the blue kettle was fine and arrived on time"},
            "outputs": {"label": "pos"},
            "score": i / 10,
        }
        for i in range(10)
    ]
    records += [
        {
            "inputs": {"text": "Review number 1 of the blue kettle was fine and arrived on time."},
            "outputs": {"label": "neg"},
        },  # conflict
        {
            "inputs": {"text": "review number 1 of the blue kettle was fine and arrived on time"},
            "outputs": {"label": "pos"},
        },  # duplicate
        {"inputs": {"text": "an entirely different sentence about trains and stations"}, "outputs": {}},
    ]
    report = Dataset.from_records(records).health()
    assert report.size == 13
    assert report.exact_duplicates == 2
    assert report.conflicting_duplicates == 1
    assert report.unlabelled == 1
    assert report.unique_inputs == 11
    assert any(a != b for a, b, _ in report.near_duplicates)  # "review number 2 ..." vs "... 3 ..."
    (balance,) = report.label_balance
    assert balance.field == "label" and balance.categorical and balance.top[0] == ("pos", 11)
    assert report.score_spread is not None and report.score_spread.count == 10
    assert sum(report.score_spread.histogram) == 10
    text = " ".join(report.warnings)
    assert "repeat earlier inputs" in text and "conflicting" in text and "imbalanced" in text
    assert report.to_dict()["dataset_id"] == report.dataset_id


def test_health_of_a_clean_dataset_has_no_duplicate_warnings() -> None:
    words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike".split()
    records = [{"inputs": {"q": f"{w} {w}s {w}ing"}, "outputs": {"a": w}} for w in words]
    report = Dataset.from_records(records).health()
    assert report.exact_duplicates == report.conflicting_duplicates == 0
    assert report.near_duplicates == ()
    assert not [w for w in report.warnings if "duplicate" in w or "imbalanced" in w]
