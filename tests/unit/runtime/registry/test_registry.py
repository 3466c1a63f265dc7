from __future__ import annotations

import json
import pickle  # noqa: TID251  (the tests write pickle files to prove they are refused)
import uuid
from pathlib import Path

import dspy
import pytest

from geode.errors import ProgramLoadError, VersionError
from geode.runtime.programs import register_program
from geode.runtime.registry import ProgramRegistry, Score, _canonical, _sha256, program_version
from geode.runtime.runtime import Runtime
from geode.runtime.settings import Settings, TracingSettings
from geode.testing import ScriptedLM
from geode.traces.context import RunIdentity, current_run


class QA(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.answer = dspy.Predict("question -> answer")
        self.seen: list[RunIdentity | None] = []

    def forward(self, question: str) -> dspy.Prediction:
        self.seen.append(current_run())
        return self.answer(question=question)


def _with_demo(text: str) -> QA:
    program = QA()
    program.answer.demos = [dspy.Example(question=f"demo question {text}", answer=f"demo answer {text}")]
    return program


def _score(value: float, dataset: str = "ds-held") -> Score:
    return Score(dataset_id=dataset, metric="exact_match", score=value, n=20, source_dataset_id="ds-all")


@pytest.fixture
def reg(tmp_path: Path) -> ProgramRegistry:
    return ProgramRegistry(tmp_path / "programs")


def _file(reg: ProgramRegistry, name: str, version: str) -> Path:
    return reg.program_dir(name) / "versions" / f"{version}.json"


# -- save / load ------------------------------------------------------------------------------------


def test_save_and_load_round_trip(reg: ProgramRegistry) -> None:
    compiled = _with_demo("a")
    info = reg.save(
        "qa",
        compiled,
        parent=None,
        dataset_id="ds-all",
        metric="exact_match",
        scores=[_score(0.7)],
        optimizer="bootstrap",
        optimizer_settings={"max_bootstrapped_demos": 4},
    )
    assert info.version == program_version(compiled) and len(info.version) == 16
    assert info.demos == 1 and info.predictors == {"answer": "question -> answer"}
    assert info.dependency_versions["dspy"] == dspy.__version__
    assert reg.versions("qa") == [reg.info("qa", info.version)]
    loaded = reg.load_into("qa", info.version, QA())
    assert isinstance(loaded, QA)
    assert [d["answer"] for d in loaded.answer.demos] == ["demo answer a"]
    assert program_version(loaded) == info.version
    doc = json.loads(_file(reg, "qa", info.version).read_text())
    assert doc["format"] == "geode.program-version" and doc["metadata"]["optimizer"] == "bootstrap"


def test_the_same_state_is_the_same_version_and_scores_merge(reg: ProgramRegistry) -> None:
    first = reg.save("qa", _with_demo("a"), scores=[_score(0.7)])
    again = reg.save("qa", _with_demo("a"), scores=[_score(0.7), _score(0.8, "ds-other")])
    assert again.version == first.version
    assert [s.dataset_id for s in again.scores] == ["ds-held", "ds-other"]
    assert again.created_at == first.created_at
    assert reg.save("qa", _with_demo("b")).version != first.version
    assert len(reg.versions("qa")) == 2


def test_version_prefixes_and_unknown_versions(reg: ProgramRegistry) -> None:
    info = reg.save("qa", _with_demo("a"))
    assert reg.resolve_version("qa", info.version[:6]) == info.version
    with pytest.raises(VersionError, match=r"has no version 'ffffffff'.*versions: " + info.version):
        reg.info("qa", "ffffffff")
    with pytest.raises(VersionError, match="has no version"):
        reg.promote("qa", "0000000000000000", force=True)
    with pytest.raises(VersionError, match="has no version"):
        reg.info("other-program", info.version)


def test_names_that_are_not_filename_safe(reg: ProgramRegistry) -> None:
    name = "geode.examples.qa:program"
    info = reg.save(name, _with_demo("a"))
    assert reg.program_dir(name).name.startswith("geode.examples.qa_program-")
    assert reg.info(name, info.version).program == name
    assert reg.programs() == [name]


# -- bad files --------------------------------------------------------------------------------------


def test_tampered_file_is_refused(reg: ProgramRegistry) -> None:
    info = reg.save("qa", _with_demo("a"))
    path = _file(reg, "qa", info.version)
    path.write_text(path.read_text().replace("demo answer a", "demo answer EVIL"))
    with pytest.raises(ProgramLoadError, match="checksum mismatch"):
        reg.load_into("qa", info.version, QA())


def test_tampered_metadata_is_refused(reg: ProgramRegistry) -> None:
    info = reg.save("qa", _with_demo("a"), scores=[_score(0.1)])
    path = _file(reg, "qa", info.version)
    doc = json.loads(path.read_text())
    doc["metadata"]["scores"][0]["score"] = 0.99  # inflate the score to pass the gate
    path.write_text(json.dumps(doc))
    with pytest.raises(ProgramLoadError, match="checksum mismatch"):
        reg.info("qa", info.version)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b'{"format": "geode.program-version", "version": "ab', "not valid JSON"),
        (b"\x80\x04\x95\x00\x00", "pickle file"),
        (b"\xff\xfe\x00garbage", "not UTF-8"),
        (b"[1, 2, 3]", "must be a JSON object"),
    ],
)
def test_corrupt_truncated_and_pickle_files_are_refused(
    reg: ProgramRegistry, content: bytes, message: str
) -> None:
    info = reg.save("qa", _with_demo("a"))
    _file(reg, "qa", info.version).write_bytes(content)
    with pytest.raises(ProgramLoadError, match=message):
        reg.load_into("qa", info.version, QA())


def test_real_pickle_payload_never_executes(reg: ProgramRegistry, tmp_path: Path) -> None:
    canary = tmp_path / "canary"

    class Boom:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (canary.write_text, ("pwned",))

    info = reg.save("qa", _with_demo("a"))
    _file(reg, "qa", info.version).write_bytes(pickle.dumps(Boom(), protocol=4))
    with pytest.raises(ProgramLoadError, match="pickle"):
        reg.load_into("qa", info.version, QA())
    pkl = tmp_path / "program.pkl"
    pkl.write_bytes(pickle.dumps(Boom(), protocol=4))
    with pytest.raises(ProgramLoadError, match="never loads pickle"):
        reg.import_file("qa", pkl, QA())
    assert not canary.exists()


def test_unknown_fields_are_refused(reg: ProgramRegistry) -> None:
    info = reg.save("qa", _with_demo("a"))
    path = _file(reg, "qa", info.version)
    doc = json.loads(path.read_text())
    doc["extra"] = 1
    path.write_text(json.dumps(doc))
    with pytest.raises(ProgramLoadError, match="unknown field\\(s\\) 'extra'"):
        reg.info("qa", info.version)
    doc.pop("extra")
    doc["metadata"]["owner"] = "me"
    path.write_text(json.dumps(doc))
    with pytest.raises(ProgramLoadError, match="unknown metadata field\\(s\\) 'owner'"):
        reg.info("qa", info.version)


def test_a_consistent_file_with_unknown_predictor_state_is_refused(reg: ProgramRegistry) -> None:
    # Predict.load_state would setattr any key; a crafted (re-hashed) file must not reach it.
    program = _with_demo("a")
    state = json.loads(json.dumps(program.dump_state()))
    state["answer"]["forward"] = "shadowed"
    version = _sha256(_canonical(state))[:16]
    meta = reg.save("qa", program).metadata()
    reg._write_version(_file(reg, "qa", version), version, meta, state)
    with pytest.raises(ProgramLoadError, match="unknown state field\\(s\\) 'forward'"):
        reg.load_into("qa", version, QA())


def test_a_version_that_does_not_fit_the_program_is_refused(reg: ProgramRegistry) -> None:
    info = reg.save("qa", _with_demo("a"))

    class Other(dspy.Module):
        def __init__(self) -> None:
            super().__init__()
            self.summarize = dspy.Predict("text -> summary")

    with pytest.raises(
        ProgramLoadError, match="missing predictor\\(s\\) summarize; unknown predictor\\(s\\) answer"
    ):
        reg.load_into("qa", info.version, Other())


def test_import_of_a_dspy_json_save(reg: ProgramRegistry, tmp_path: Path) -> None:
    path = tmp_path / "compiled.json"
    _with_demo("z").save(str(path))
    info = reg.import_file("qa", path, QA())
    assert info.version == program_version(_with_demo("z"))
    assert info.note == "imported from compiled.json"
    saved_dir = tmp_path / "whole"
    saved_dir.mkdir()
    (saved_dir / "program.pkl").write_bytes(b"\x80\x05junk")
    with pytest.raises(ProgramLoadError, match="pickle"):
        reg.import_file("qa", saved_dir, QA())


def test_scan_lists_bad_files_without_failing(reg: ProgramRegistry) -> None:
    good = reg.save("qa", _with_demo("a"))
    bad = reg.save("qa", _with_demo("b"))
    _file(reg, "qa", bad.version).write_text("{")
    (reg.program_dir("qa") / "versions" / "old.pkl").write_bytes(b"\x80\x04x")
    versions, problems = reg.scan("qa")
    assert [v.version for v in versions] == [good.version]
    reasons = {p.name: why for p, why in problems}
    assert "not valid JSON" in reasons[f"{bad.version}.json"]
    assert reasons["old.pkl"] == "pickle file refused"


# -- promotion and rollback ---------------------------------------------------------------------------


def test_promotion_is_gated_by_the_margin(reg: ProgramRegistry) -> None:
    info = reg.save("qa", _with_demo("a"))
    with pytest.raises(
        VersionError, match=r"scored 62\.0% vs 60\.0% for the base program .*\+2\.0 points.*\+5\.0 points"
    ):
        reg.promote("qa", info.version, candidate_score=0.62, active_score=0.60)
    assert reg.active("qa") is None
    with pytest.raises(VersionError, match="no scores"):
        reg.promote("qa", info.version)
    event = reg.promote("qa", info.version, candidate_score=0.62, active_score=0.60, margin=0.02)
    assert event.version == info.version and event.previous is None and not event.forced
    assert reg.active("qa") == info.version
    with pytest.raises(VersionError, match="already the active version"):
        reg.promote("qa", info.version, force=True)


def test_forced_promotion_and_rollback_history(reg: ProgramRegistry) -> None:
    v1 = reg.save("qa", _with_demo("1")).version
    v2 = reg.save("qa", _with_demo("2")).version
    reg.promote("qa", v1, candidate_score=0.8, active_score=0.5)
    event = reg.promote("qa", v2, candidate_score=0.1, active_score=0.8, force=True, reason="hotfix")
    assert event.forced and event.previous == v1
    assert reg.history("qa") == [None, v1]
    assert reg.rollback("qa").version == v1
    assert reg.active("qa") == v1
    assert reg.rollback("qa").version is None  # back to the base program
    assert reg.active("qa") is None
    with pytest.raises(VersionError, match="nothing to roll back to"):
        reg.rollback("qa")
    actions = [e["action"] for e in reg.events("qa")]
    assert actions == ["promote", "promote", "rollback", "rollback"]
    leftovers = [p.name for p in reg.program_dir("qa").iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_a_corrupt_candidate_is_never_promoted(reg: ProgramRegistry) -> None:
    v1 = reg.save("qa", _with_demo("1")).version
    v2 = reg.save("qa", _with_demo("2")).version
    reg.promote("qa", v1, force=True)
    _file(reg, "qa", v2).write_text("{}")
    with pytest.raises(ProgramLoadError):
        reg.promote("qa", v2, force=True)
    assert reg.active("qa") == v1


def test_rollback_to_a_corrupt_version_keeps_the_active_one(reg: ProgramRegistry) -> None:
    v1 = reg.save("qa", _with_demo("1")).version
    v2 = reg.save("qa", _with_demo("2")).version
    reg.promote("qa", v1, force=True)
    reg.promote("qa", v2, force=True)
    _file(reg, "qa", v1).write_text('{"truncated": ')
    with pytest.raises(ProgramLoadError, match="not valid JSON"):
        reg.rollback("qa")
    assert reg.active("qa") == v2


def test_gate_scores_pair_scores_on_the_same_examples(reg: ProgramRegistry) -> None:
    base = reg.save("qa", QA(), scores=[_score(0.5), _score(0.4, "ds-x")]).version
    cand = reg.save("qa", _with_demo("a"), scores=[_score(0.9, "ds-y"), _score(0.7)]).version
    pair = reg.add_score("qa", cand, _score(0.75, "ds-x")) and reg.gate_scores("qa", cand, base)
    assert pair is not None
    candidate, active = pair
    assert (candidate.dataset_id, candidate.score, active.score) == ("ds-x", 0.75, 0.4)


# -- serving ---------------------------------------------------------------------------------------


def _runtime(tmp_path: Path, answers: list[str]) -> tuple[Runtime, ScriptedLM]:
    answers.clear()

    def record(messages: list[dict[str, str]]) -> dict[str, str]:
        answers.append("\n".join(m["content"] for m in messages))
        return {"answer": "ok"}

    lm = ScriptedLM(record)
    settings = Settings(home=tmp_path / "home", tracing=TracingSettings(enabled=False))
    return Runtime(settings, lm=lm), lm


def test_runtime_serves_the_active_version_and_stamps_it(tmp_path: Path) -> None:
    name = f"qa-{uuid.uuid4().hex[:8]}"
    base = QA()
    register_program(name, base)
    prompts: list[str] = []
    rt, _ = _runtime(tmp_path, prompts)
    rt.run(name, question="first")
    assert base.seen[-1] is not None and base.seen[-1].version is None
    assert "demo answer" not in prompts[-1]

    v1 = rt.registry.save(name, _with_demo("one")).version
    rt.registry.promote(name, v1, force=True)
    served = rt.serve(name)
    assert served.version == v1 and served.module is not base
    rt.run(name, question="second")
    assert isinstance(served.module, QA)
    identity = served.module.seen[-1]
    assert identity is not None and identity.version == v1 and identity.program == name
    assert "demo answer one" in prompts[-1]
    assert base.answer.demos == []  # the registered instance is never mutated

    rt.registry.rollback(name)
    rt.run(name, question="third")
    assert base.seen[-1] is not None and base.seen[-1].version is None
    assert "demo answer one" not in prompts[-1]


def test_a_broken_new_version_leaves_the_previous_one_serving(tmp_path: Path) -> None:
    name = f"qa-{uuid.uuid4().hex[:8]}"
    register_program(name, QA)
    prompts: list[str] = []
    rt, _ = _runtime(tmp_path, prompts)
    v1 = rt.registry.save(name, _with_demo("one")).version
    v2 = rt.registry.save(name, _with_demo("two")).version
    rt.registry.promote(name, v1, force=True)
    assert rt.serve(name).version == v1
    rt.registry.promote(name, v2, force=True)
    _file(rt.registry, name, v2).write_text(
        _file(rt.registry, name, v2).read_text()[:50]
    )  # truncated after promotion
    served = rt.serve(name)
    assert served.version == v1
    assert served.problem is not None and "failed to load" in served.problem
    rt.run(name, question="q")
    assert "demo answer one" in prompts[-1]

    # A fresh runtime (no previous module in memory) falls back along the rollback history.
    fresh, _ = _runtime(tmp_path, prompts)
    assert fresh.serve(name).version == v1


def test_a_broken_only_version_falls_back_to_the_base_program(tmp_path: Path) -> None:
    name = f"qa-{uuid.uuid4().hex[:8]}"
    register_program(name, QA)
    prompts: list[str] = []
    rt, _ = _runtime(tmp_path, prompts)
    v1 = rt.registry.save(name, _with_demo("one")).version
    rt.registry.promote(name, v1, force=True)
    _file(rt.registry, name, v1).write_bytes(b"\x80\x04pickled")
    served = rt.serve(name)
    assert served.version is None and served.problem is not None and "pickle" in served.problem
    rt.run(name, question="q")
    assert "demo answer" not in prompts[-1]


def test_modules_passed_directly_are_served_as_given(tmp_path: Path) -> None:
    prompts: list[str] = []
    rt, _ = _runtime(tmp_path, prompts)
    program = QA()
    rt.registry.save("QA", _with_demo("x"))
    rt.registry.promote("QA", program_version(_with_demo("x")), force=True)
    served = rt.serve(program)
    assert served.module is program and served.version is None


def test_a_bare_predict_program_round_trips(reg: ProgramRegistry) -> None:
    predict = dspy.Predict("question -> answer")
    predict.demos = [dspy.Example(question="q", answer="a")]
    info = reg.save("bare", predict)
    assert info.predictors == {"self": "question -> answer"}
    loaded = reg.load_into("bare", info.version, dspy.Predict("question -> answer"))
    assert isinstance(loaded, dspy.Predict) and loaded.demos[0]["answer"] == "a"
    with pytest.raises(ProgramLoadError, match="does not fit"):
        reg.load_into("bare", info.version, QA())


def test_every_span_of_a_run_names_the_version_that_answered(tmp_path: Path) -> None:
    from geode.testing import in_memory_tracing
    from geode.traces.vocab import GeodeAttributes

    name = f"qa-{uuid.uuid4().hex[:8]}"
    register_program(name, QA)
    provider, exporter = in_memory_tracing()
    settings = Settings(home=tmp_path / "home", tracing=TracingSettings(enabled=False))
    with Runtime(settings, lm=ScriptedLM(lambda m: {"answer": "ok"}), tracer_provider=provider) as rt:
        v1 = rt.registry.save(name, _with_demo("one")).version
        rt.registry.promote(name, v1, force=True)
        rt.run(name, question="q")
        spans = exporter.get_finished_spans()
        assert spans, "the run produced no spans"
        assert [(s.attributes or {}).get(GeodeAttributes.PROGRAM_VERSION) for s in spans] == [v1] * len(spans)
        exporter.clear()
        rt.registry.rollback(name)
        rt.run(name, question="q")
        assert all(
            GeodeAttributes.PROGRAM_VERSION not in (s.attributes or {}) for s in exporter.get_finished_spans()
        )
