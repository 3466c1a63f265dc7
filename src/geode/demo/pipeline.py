"""The demo's stages, in order, on one runtime: the whole learning loop on the bundled helpdesk app.

Phoenix → ingest → agent runs (traced, with code-score feedback) → mine → label → crystallize →
recompile → evaluate on held-out questions → promote if the gate passes → report.

Every artifact is written atomically, and a run works in ``<home>/demo/runs/<id>.partial`` until it
completes, when the folder is renamed; an interrupted run (Ctrl-C) therefore leaves a ``.partial`` folder
that the next run deletes, and never a half-written file that a later step reads. The store and Phoenix
are reused across runs: unchanged corpus files are not re-embedded (their content hash matches), and a
Phoenix that Geode started keeps running with its data.

The parts that need a model, a store or a server can be injected (:class:`DemoParts`), so the whole
pipeline runs in tests on a scripted LM, a hashing embedder and an in-memory Qdrant.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import dspy

from geode.agents.agent import Agent
from geode.agents.crystallize import (
    Crystallization,
    CrystallizedWorkflow,
    CrystallizeError,
    CrystallizeOptions,
    RunScore,
    crystallize,
)
from geode.errors import DatasetError, GeodeError, MissingExtraError
from geode.evals.compile import CompileResult, compile_program
from geode.evals.dataset import Dataset, Record
from geode.evals.evaluate import EvalResult, Pricing, evaluate
from geode.evals.mining import MiningResult, mine
from geode.evals.report import ProgramComparison
from geode.examples import helpdesk
from geode.retrieval import Embedder, Ingestor, IngestReport, Retriever, Store
from geode.runtime.feedback import feedback_annotations
from geode.runtime.lm import is_local
from geode.runtime.phoenix import PhoenixServer, PhoenixStartError, PhoenixStatus
from geode.runtime.programs import register_program
from geode.runtime.registry import ProgramRegistry, Score, _atomic_write, program_version
from geode.runtime.runtime import Runtime, trace_id_of
from geode.runtime.settings import LMSettings, Settings, TracingSettings
from geode.traces.records import TraceRecord
from geode.traces.sources import OtlpFileTraceSource

__all__ = [
    "AGENT_PROGRAM",
    "AGENT_REF",
    "DEFAULT_HELD_OUT",
    "DEFAULT_QUESTIONS",
    "LOCAL_MAX_TOKENS",
    "PROJECT",
    "DemoOptions",
    "DemoParts",
    "DemoResult",
    "Progress",
    "Row",
    "run_demo",
    "workflow_program",
]

DEFAULT_QUESTIONS = 4
"""Training questions the agent answers by default (sized so the default run fits in 10 minutes)."""
DEFAULT_HELD_OUT = 3
"""Held-out questions every program is evaluated on by default."""
CORRECT_RUN_SCORE = 1.0
"""A training run counts as a success for crystallization when the metric gave it this score."""
LOCAL_MAX_TOKENS = 128
"""Cap on tokens per call of the embedded model: a looping answer costs seconds per ten tokens."""
PROJECT = "geode-demo"
"""The Phoenix project the demo's traces land in."""
AGENT_PROGRAM = "helpdesk-agent"
"""The name the agent's runs are traced (and mined) under."""
AGENT_REF = "geode.demo.app:agent"
"""How the workflow spec names the agent it falls back to (a zero-argument factory)."""
FEEDBACK_NAME = "correctness"
GATE_MARGIN = 0.05


def workflow_program(settings: Settings) -> str:
    """The workflow's program name: the path of its spec, as ``geode run`` and the registry name it."""
    return str(settings.home / "demo" / "workflow.json")


class Progress:
    """Where the demo reports what it is doing; the default says nothing (the CLI prints)."""

    def stage(self, number: int, title: str) -> None:
        """A stage starts."""

    def info(self, message: str) -> None:
        """A line of detail."""

    def warn(self, message: str) -> None:
        """Something went wrong but the demo goes on."""

    @contextlib.contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Callable[[int, str], None]]:
        """A progress bar; the yielded function sets ``(completed, status text)``."""
        yield lambda done, status: None


@dataclass(frozen=True)
class DemoOptions:
    """What the demo runs."""

    questions: int = DEFAULT_QUESTIONS
    """Training questions the agent runs on (spread over the train split)."""
    held_out: int = DEFAULT_HELD_OUT
    """Held-out questions the three programs are evaluated on."""
    fresh: bool = False
    """Start over: drop the demo's collection, runs and program versions (Phoenix keeps its data)."""
    phoenix: bool = True
    """Start (or reuse) a local Phoenix and send the traces there."""
    include_docs: bool = True
    """Ingest Geode's own docs along with the shop's pages."""

    def __post_init__(self) -> None:
        if self.questions < 2:
            raise DatasetError(
                f"--questions must be at least 2 (crystallizing needs 2 runs), got {self.questions}"
            )
        if self.held_out < 1:
            raise DatasetError(f"--held-out must be at least 1, got {self.held_out}")


@dataclass
class DemoParts:
    """Parts to inject instead of building them from settings (tests, or an application's own)."""

    lm: dspy.BaseLM | None = None
    store: Store | None = None
    embedder: Embedder | None = None
    adapter: dspy.Adapter | None = None
    phoenix: PhoenixServer | None = None
    """The Phoenix launcher; default: the one for the settings' home."""


@dataclass(frozen=True)
class Row:
    """One program's line in the summary."""

    label: str
    program: str
    result: EvalResult
    version: str | None = None


@dataclass
class DemoResult:
    """Everything the demo did, for the summary, the report and tests."""

    run_id: str
    run_dir: Path
    settings: Settings
    phoenix: PhoenixStatus | None = None
    ingest: IngestReport | None = None
    train_scores: list[float] = field(default_factory=list[float])
    train_run_scores: dict[str, float] = field(default_factory=dict[str, float])
    """The metric's score of each traced training run, by trace id (what crystallization learns from)."""
    mining: MiningResult | None = None
    labelled: Dataset | None = None
    crystallization: Crystallization | None = None
    compiled: CompileResult | None = None
    rows: list[Row] = field(default_factory=list[Row])
    promotion: str | None = None
    """What happened at the gate, in one sentence."""
    promoted: str | None = None
    """The version promoted, if any."""
    skipped: dict[str, str] = field(default_factory=dict[str, str])
    """Stages that did not run, and why."""
    report: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict[str, float])
    """Wall time per stage."""

    @property
    def workflow_spec(self) -> Path:
        """Where the published workflow spec is."""
        return Path(workflow_program(self.settings))

    @property
    def train_trace_ids(self) -> list[str]:
        """The traced training runs' trace ids, in the order they ran."""
        return list(self.train_run_scores)

    def row(self, label: str) -> Row | None:
        """The summary row with this label."""
        return next((r for r in self.rows if r.label == label), None)


# -- files ----------------------------------------------------------------------------------------


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename (readers never see half of it)."""
    # The registry's writer: temporary file in the same folder, fsync, os.replace.
    _atomic_write(path, text)
    return path


def _demo_dir(settings: Settings) -> Path:
    return settings.home / "demo"


def _runs_dir(settings: Settings) -> Path:
    return _demo_dir(settings) / "runs"


def _clean_partial(settings: Settings) -> list[Path]:
    """Delete what interrupted runs left behind (their ``.partial`` folders and temporary reports)."""
    removed: list[Path] = []
    for parent, pattern in ((_runs_dir(settings), "*.partial"), (settings.reports_dir, ".demo-*.tmp")):
        if parent.is_dir():
            for path in parent.glob(pattern):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


def _start_over(settings: Settings, store: Store, registry: ProgramRegistry) -> None:
    if helpdesk.COLLECTION in store.list_collections():
        store.delete_collection(helpdesk.COLLECTION)
    shutil.rmtree(_demo_dir(settings), ignore_errors=True)
    shutil.rmtree(registry.program_dir(workflow_program(settings)), ignore_errors=True)


# -- settings --------------------------------------------------------------------------------------


def demo_settings(settings: Settings, run_dir: Path, endpoint: str | None) -> Settings:
    """The runtime settings of one demo run: its own span file and project, no response cache.

    The cache is off so latencies are measured, not replayed; the embedded model's answers are capped
    at :data:`LOCAL_MAX_TOKENS` tokens.
    """
    tracing = settings.tracing.model_dump()
    tracing.update(enabled=True, otlp_file=run_dir / "spans.jsonl", project=PROJECT)
    if endpoint is not None:
        tracing["endpoint"] = endpoint
    lm = settings.lm.model_dump()
    lm["cache"] = False
    if settings.lm.model == "local":
        lm["max_tokens"] = min(settings.lm.max_tokens, LOCAL_MAX_TOKENS)
    return settings.model_copy(update={"tracing": TracingSettings(**tracing), "lm": LMSettings(**lm)})


# -- the stages ------------------------------------------------------------------------------------


class _Demo:
    def __init__(
        self, settings: Settings, options: DemoOptions, parts: DemoParts, progress: Progress
    ) -> None:
        self.base = settings
        self.options = options
        self.parts = parts
        self.say = progress
        # Seconds alone collide when a run finishes fast (a re-run within the same second, same pid).
        stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        self.run_id = f"{stamp}-{os.getpid()}-{secrets.token_hex(2)}"
        self.partial = _runs_dir(settings) / f"{self.run_id}.partial"
        self.result = DemoResult(self.run_id, self.partial, settings)
        self.train = helpdesk.pick(helpdesk.load_questions("train"), options.questions)
        self.heldout = helpdesk.pick(helpdesk.load_questions("heldout"), options.held_out)
        self.gold = {q.question: q for q in helpdesk.load_questions()}
        self.heldout_data = helpdesk.questions_dataset(self.heldout, "helpdesk-heldout")

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.result.seconds[name] = time.perf_counter() - started

    # 1
    def start_phoenix(self, server: PhoenixServer) -> PhoenixStatus | None:
        self.say.stage(1, "Phoenix")
        if not self.options.phoenix:
            self.say.info("skipped (--no-phoenix); spans still go to the run's OTLP-JSON file")
            return None
        try:
            status = server.start(any_port=True, wait=False)
        except MissingExtraError as err:
            self.say.warn(f"{err}; going on without Phoenix (or pass --no-phoenix)")
            return None
        configured = self.base.phoenix.port
        if not status.url.endswith(f":{configured}"):
            self.say.warn(f"port {configured} is in use by another program; Phoenix uses {status.url}")
        self.say.info(("reusing" if status.reused else "starting") + f" Phoenix at {status.url}")
        return status

    def wait_phoenix(self, server: PhoenixServer, status: PhoenixStatus | None) -> PhoenixStatus | None:
        if status is None or status.running:
            return status
        try:
            with self.timed("phoenix wait"):
                return server.start(any_port=True, wait=True, progress=False)
        except PhoenixStartError as err:
            self.say.warn(f"Phoenix did not start ({err}); going on without it")
            return None

    # 2
    def ingest(self, store: Store, embedder: Embedder) -> IngestReport:
        self.say.stage(2, f"ingest the helpdesk corpus into collection {helpdesk.COLLECTION!r}")
        paths = helpdesk.corpus_paths(include_docs=self.options.include_docs)
        with self.say.task("embedding chunks", None) as update:
            report = Ingestor(store, embedder).ingest(
                paths,
                helpdesk.COLLECTION,
                on_progress=lambda phase, done, total: update(done, f"{phase} {done}/{total}"),
            )
        count = store.count(helpdesk.COLLECTION)
        self.say.info(
            f"{count} chunks in the collection; {report.files} file(s) embedded ({report.chunks} chunks), "
            f"{report.unchanged} unchanged file(s) skipped by content hash"
        )
        return report

    # 3
    def run_agent(self, rt: Runtime) -> None:
        self.say.stage(3, f"run the agent on {len(self.train)} training questions (traced)")
        scores: list[float] = []
        with self.say.task("agent runs", len(self.train)) as update:
            for done, q in enumerate(self.train, start=1):
                try:
                    pred = rt.run(
                        AGENT_PROGRAM, question=q.question, metadata={"geode.demo.run": self.run_id}
                    )
                except GeodeError as err:
                    self.say.warn(f"{q.id}: {err}")
                    scores.append(0.0)
                    update(done, f"{sum(scores):.0f}/{done} correct")
                    continue
                score = float(helpdesk.metric(q.example(), pred))
                scores.append(score)
                trace_id = trace_id_of(pred)
                if trace_id is not None:
                    self.result.train_run_scores[trace_id] = score
                    # A code check plays the user's thumbs: it becomes the mined run's label score.
                    rt.feedback(
                        trace_id,
                        score=score,
                        label="correct" if score >= 1 else "incorrect",
                        comment=helpdesk.metric.feedback(q.example(), pred),
                        name=FEEDBACK_NAME,
                        annotator_kind="CODE",
                        program=AGENT_PROGRAM,
                    )
                update(done, f"{sum(scores):.0f}/{done} correct")
        self.result.train_scores = scores
        pipeline = rt.export_pipeline
        if pipeline is not None:
            pipeline.force_flush()
        self.say.info(f"{sum(scores):.0f} of {len(scores)} answered correctly; feedback recorded on each run")

    # 4
    def mine_runs(self, source: OtlpFileTraceSource, settings: Settings) -> tuple[MiningResult, Dataset]:
        self.say.stage(4, "mine the traces into an eval set")
        result = mine(
            source,
            AGENT_PROGRAM,
            wait_for=self.result.train_trace_ids,
            wait_timeout_s=30.0,
            annotations=feedback_annotations(settings),
            annotation_names=[FEEDBACK_NAME],
            name="helpdesk-mined",
        )
        result.save(self.partial / "mined.jsonl")
        skipped = ", ".join(f"{n} {reason}" for reason, n in result.skipped.items() if n) or "none"
        self.say.info(
            f"{len(result.dataset)} examples from {result.traces_read} traces ({result.source_used}); "
            f"skipped: {skipped}"
        )
        labelled = self.label(result.dataset)
        labelled.save(self.partial / "labelled.jsonl")
        self.heldout_data.save(self.partial / "heldout.jsonl")
        self.say.info(
            f"labelled {len(labelled)} examples with the question set's gold answers "
            "(standing in for a reviewer correcting the mined outputs)"
        )
        return result, labelled

    def label(self, mined: Dataset) -> Dataset:
        records: list[Record] = []
        for record in mined.records:
            question = self.gold.get(str(record.inputs.get("question", "")))
            if question is None:
                continue
            metadata = {**record.metadata, "traced_outputs": dict(record.outputs)}
            records.append(replace(record, outputs={"answer": question.answer}, metadata=metadata))
        return Dataset.from_records(records, name="helpdesk-labelled")

    # 5
    def crystallize(self, agent: Agent, source: OtlpFileTraceSource) -> Crystallization | None:
        self.say.stage(5, "crystallize the agent into a workflow")
        wait = source.wait_for(self.result.train_trace_ids, timeout_s=30.0)
        traces: list[TraceRecord] = list(wait.traces)
        scores = {tid: RunScore(score=score) for tid, score in self.result.train_run_scores.items()}

        def attempt(threshold: float, min_route_runs: int) -> Crystallization:
            return crystallize(
                agent,
                traces,
                agent_ref=AGENT_REF,
                name="helpdesk-workflow",
                program=AGENT_PROGRAM,
                scores=scores,
                description=f"{len(traces)} demo runs in {source.description}",
                options=CrystallizeOptions(success_threshold=threshold, min_route_runs=min_route_runs),
            )

        # Wrong runs must not become the workflow's pattern or its demos, so it learns from the correct
        # ones; a handful of runs on a small model may hold a single correct one, which is still better
        # than wrong ones; only when none was correct does it use every completed run, and it says so.
        plans = (
            (CORRECT_RUN_SCORE, 2, None),
            (CORRECT_RUN_SCORE, 1, "learning from the correct runs, even a pattern seen once"),
            (0.0, 2, "crystallizing from every completed run instead"),
        )
        problem: CrystallizeError | None = None
        for threshold, min_route_runs, note in plans:
            if problem is not None and note is not None:
                self.say.warn(f"{problem}; {note}")
            try:
                found = attempt(threshold, min_route_runs)
                break
            except CrystallizeError as err:
                problem = err
        else:
            self.result.skipped["crystallize"] = str(problem)
            self.say.warn(f"no workflow: {problem}")
            return None
        found.save(self.partial / "workflow.json")
        atomic_write_text(self.partial / "workflow.md", found.report())
        for route in found.spec.routes:
            self.say.info(f"route {route.label}")
        return found

    # 6
    def recompile(self, rt: Runtime, workflow: dspy.Module, labelled: Dataset) -> CompileResult | None:
        self.say.stage(
            6,
            f"recompile the workflow from the {len(labelled)} mined examples "
            f"(scored before and after on the {len(self.heldout_data)} held-out questions)",
        )
        # The mined examples train; the held-out questions (never run before) measure both versions.
        data = Dataset.from_records(
            [*(replace(r, split="train") for r in labelled.records), *self.heldout_data.records],
            name="helpdesk-recompile",
        )
        try:
            with rt.batch():
                result = compile_program(
                    workflow,
                    data,
                    helpdesk.metric,
                    optimizer="bootstrap",
                    max_bootstrapped_demos=1,
                    max_labeled_demos=2,
                    min_train=1,
                    min_heldout=1,
                    program_name=workflow_program(self.base),
                    version_of=program_version,
                    pricing=_pricing(rt),
                    show_progress=True,
                    log=self.say.info,
                )
        except DatasetError as err:
            self.result.skipped["recompile"] = str(err)
            self.say.warn(f"not recompiled: {err}")
            return None
        self.say.info(
            f"{result.candidate_demos} demos in {result.compile_seconds:.0f} s ({result.compile_lm_calls} LM calls); "
            f"held out: {100 * result.baseline.score:.0f}% before, {100 * result.candidate.score:.0f}% after"
        )
        return result

    # 7
    def evaluate(self, rt: Runtime, programs: Sequence[tuple[str, str, dspy.Module]]) -> list[Row]:
        self.say.stage(7, f"evaluate {', '.join(p[0] for p in programs)} on the held-out questions")
        rows: list[Row] = []
        for label, name, module in programs:
            with self.say.task(f"eval {label}", len(self.heldout_data)) as update, rt.batch():
                result = evaluate(
                    module,
                    self.heldout_data,
                    _counting(update),
                    program_name=name,
                    split="heldout",
                    pricing=_pricing(rt),
                )
            rows.append(Row(label, name, result))
            self.say.info(f"{label}: {100 * result.score:.0f}% ({result.lm_calls} LM calls)")
        return rows

    # 8
    def promote(
        self, registry: ProgramRegistry, workflow: dspy.Module, recompiled: dspy.Module | None
    ) -> None:
        self.say.stage(8, "promote the winner if it passes the gate")
        name = workflow_program(self.base)
        base_row, cand_row = self.result.row("workflow"), self.result.row("recompiled")
        if base_row is None:
            self.result.promotion = "nothing to promote: there is no workflow"
            self.say.info(self.result.promotion)
            return
        base = registry.save(
            name, workflow, scores=[Score.heldout(base_row.result)], note="crystallized by geode demo"
        )
        self.result.rows[self.result.rows.index(base_row)] = replace(base_row, version=base.version)
        if recompiled is None or cand_row is None:
            self.result.promotion = "no recompiled candidate to promote"
            self.say.info(self.result.promotion)
            return
        cand = registry.save(
            name,
            recompiled,
            parent=base.version,
            scores=[Score.heldout(cand_row.result)],
            optimizer="bootstrap",
        )
        self.result.rows[self.result.rows.index(cand_row)] = replace(cand_row, version=cand.version)
        self.result.promotion, self.result.promoted = _gate(
            registry, name, cand.version, base.version, workflow
        )
        self.say.info(self.result.promotion)


def _pricing(rt: Runtime) -> Pricing:
    """The embedded model is free; other models are priced from litellm's list."""
    return Pricing(free={str(rt.lm.model)}) if is_local(rt.lm) else Pricing()


def _counting(update: Callable[[int, str], None]) -> Callable[..., float | bool]:
    """The helpdesk metric, also moving a progress bar with the running score."""
    tally = {"n": 0, "correct": 0.0}

    def helpdesk_metric(example: dspy.Example, pred: Any, trace: Any = None) -> float | bool:
        value = helpdesk.metric(example, pred, trace)
        tally["n"] += 1
        tally["correct"] += float(value)
        update(tally["n"], f"{tally['correct']:.0f}/{tally['n']} correct")
        return value

    helpdesk_metric.__name__ = helpdesk.metric.name
    return helpdesk_metric


def _gate(
    registry: ProgramRegistry, name: str, candidate: str, base: str, module: dspy.Module
) -> tuple[str, str | None]:
    active = registry.active(name) or base
    if candidate == active:
        return f"{candidate} is already serving: the optimizer changed nothing", None
    pair = registry.gate_scores(name, candidate, active)
    try:
        registry.promote(
            name,
            candidate,
            candidate_score=pair[0].score if pair else None,
            active_score=pair[1].score if pair else None,
            margin=GATE_MARGIN,
            module=module,
            reason="geode demo",
        )
    except GeodeError as err:
        return f"gate refused {candidate}: {err}", None
    return f"promoted {candidate} (it beats {active} by at least {GATE_MARGIN * 100:.0f} points)", candidate


# -- the whole run ---------------------------------------------------------------------------------


def run_demo(
    settings: Settings,
    options: DemoOptions | None = None,
    *,
    parts: DemoParts | None = None,
    progress: Progress | None = None,
    write_report: Callable[[DemoResult, Path], None] | None = None,
) -> DemoResult:
    """Run the whole loop on the bundled helpdesk application and return what happened.

    Args:
        settings: Geode's settings (home, LM, Phoenix port...); the demo derives its runtime's settings.
        options: Sizes and switches.
        parts: Injected parts (tests); anything not given is built from ``settings``.
        progress: Receives stage titles, details and progress bars.
        write_report: Writes the report into the folder it is given (which is then renamed into place).

    Raises:
        GeodeError: A stage failed in a way the demo cannot go on from (the message says what to do).
    """
    opts = options or DemoOptions()
    given = parts or DemoParts()
    say = progress or Progress()
    demo = _Demo(settings, opts, given, say)
    registry = ProgramRegistry(settings.programs_dir)
    server = given.phoenix or PhoenixServer.from_settings(settings)
    for path in _clean_partial(settings):
        say.info(f"removed {path.name} left by an interrupted run")
    with demo.timed("phoenix"):
        status = demo.start_phoenix(server)
    run_settings = demo_settings(settings, demo.partial, status.url if status else None)
    demo.partial.mkdir(parents=True, exist_ok=True)
    rt = Runtime(
        run_settings,
        lm=given.lm,
        store=given.store,
        embedder=given.embedder,
        adapter=given.adapter,
        registry=registry,
    )
    try:
        if opts.fresh:
            _start_over(settings, rt.store, registry)
            demo.partial.mkdir(parents=True, exist_ok=True)
            say.info("--fresh: dropped the demo's collection, runs and workflow versions")
        with demo.timed("ingest"):
            demo.result.ingest = demo.ingest(rt.store, rt.embedder)
        demo.result.phoenix = demo.wait_phoenix(server, status)
        _loop(demo, rt, registry, run_settings)
    finally:
        rt.close()
    return _finish(demo, write_report)


def _loop(demo: _Demo, rt: Runtime, registry: ProgramRegistry, run_settings: Settings) -> None:
    retriever = Retriever(rt.store, rt.embedder, helpdesk.COLLECTION, k=2)
    agent = helpdesk.build_agent(retriever)
    register_program(AGENT_PROGRAM, agent)
    with demo.timed("agent runs"):
        demo.run_agent(rt)
    source = OtlpFileTraceSource(demo.partial / "spans.jsonl")
    with demo.timed("mine"):
        demo.result.mining, demo.result.labelled = demo.mine_runs(source, run_settings)
    with demo.timed("crystallize"):
        demo.result.crystallization = demo.crystallize(agent, source)
    name = workflow_program(demo.base)
    programs: list[tuple[str, str, dspy.Module]] = [("agent", AGENT_PROGRAM, agent)]
    workflow: CrystallizedWorkflow | None = None
    compiled: CompileResult | None = None
    if demo.result.crystallization is not None:
        workflow = demo.result.crystallization.workflow()
        register_program(name, workflow)
        with demo.timed("recompile"):
            compiled = demo.result.compiled = demo.recompile(rt, workflow, demo.result.labelled)
        if compiled is None:
            programs.append(("workflow", name, workflow))
    with demo.timed("evaluate"):
        demo.result.rows = demo.evaluate(rt, programs)
    if compiled is not None:
        # compile_program scored both versions on the same held-out questions; no need to run them again.
        demo.result.rows += [
            Row("workflow", name, compiled.baseline),
            Row("recompiled", name, compiled.candidate),
        ]
    with demo.timed("promote"):
        if workflow is not None:
            demo.promote(registry, workflow, compiled.candidate_program if compiled else None)
        else:
            demo.result.promotion = "nothing to promote: there is no workflow"


def _finish(demo: _Demo, write_report: Callable[[DemoResult, Path], None] | None) -> DemoResult:
    result = demo.result
    settings = demo.base
    if result.crystallization is not None:
        # The published spec is what `geode run <home>/demo/workflow.json` serves.
        result.crystallization.save(result.workflow_spec)
    if write_report is not None:
        final = settings.reports_dir / f"demo-{demo.run_id}"
        staging = settings.reports_dir / f".demo-{demo.run_id}.tmp"
        try:
            write_report(result, staging)
            os.replace(staging, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        result.report = final / "index.html"
    done = _runs_dir(settings) / demo.run_id
    os.replace(demo.partial, done)
    result.run_dir = done
    summary = {
        "run_id": demo.run_id,
        "run_dir": str(done),
        "report": str(result.report) if result.report else None,
        "phoenix": result.phoenix.url if result.phoenix else None,
        "rows": [
            {"label": r.label, "program": r.program, "version": r.version, **r.result.to_dict(examples=False)}
            for r in result.rows
        ],
        "promotion": result.promotion,
        "skipped": result.skipped,
        "seconds": result.seconds,
    }
    atomic_write_text(done / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    atomic_write_text(_demo_dir(settings) / "latest.json", json.dumps(summary, indent=2, default=str) + "\n")
    return result


def comparison(result: DemoResult) -> ProgramComparison | None:
    """Agent vs crystallized workflow on the held-out questions, when both were evaluated."""
    agent, workflow = result.row("agent"), result.row("workflow")
    if agent is None or workflow is None:
        return None
    return ProgramComparison(agent.result, workflow.result)
