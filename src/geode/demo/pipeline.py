"""The demo's stages, in order, on one runtime: the whole learning loop on the bundled helpdesk app.

Phoenix → ingest → agent runs (traced, with code-score feedback) → mine → label → crystallize (kept only
if it saves LM calls) → recompile (a search judged on the training data) → evaluate on held-out
questions → promote if the gate passes on the validation questions → report.

Three disjoint question sets: the agent runs on training questions (its runs are mined, crystallized and
tuned on); ``validation`` other training questions decide the gate; the held-out questions only measure.

Every artifact is written atomically. A run works in ``<home>/demo/runs/<id>/`` (the name every file,
spec and report refers to) with an ``INCOMPLETE`` marker in it until it completes; an interrupted run
(Ctrl-C) therefore leaves a marked folder that the next run deletes, and never a half-written file that
a later step reads. The store and Phoenix are reused across runs: unchanged corpus files are not
re-embedded (their content hash matches), and a Phoenix that Geode started keeps running with its data.

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
from dataclasses import replace
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
    check_cost,
    crystallize,
)
from geode.demo.gate import gate, validation_score
from geode.demo.recompile import Scored, finetune_candidate, recompile_candidates, search
from geode.demo.result import (
    DEFAULT_HELD_OUT,
    DEFAULT_QUESTIONS,
    DEFAULT_VALIDATION,
    QUICK,
    DemoOptions,
    DemoParts,
    DemoResult,
    Gate,
    Progress,
    Row,
    workflow_program,
)
from geode.demo.run_files import (
    INCOMPLETE,
    LOCAL_MAX_TOKENS,
    PROJECT,
    atomic_write_text,
    clean_incomplete,
    demo_dir,
    demo_settings,
    open_run,
    runs_dir,
    start_over,
)
from geode.errors import GeodeError, MissingExtraError
from geode.evals.compile import demo_count
from geode.evals.dataset import Dataset, Record
from geode.evals.evaluate import EvalResult, Pricing, evaluate
from geode.evals.mining import MiningResult, mine
from geode.evals.report import ProgramComparison
from geode.examples import helpdesk
from geode.retrieval import Embedder, Ingestor, IngestReport, Retriever, Store
from geode.runtime.feedback import feedback_annotations
from geode.runtime.finetune.artifacts import lm_artifact_of
from geode.runtime.lm import is_local
from geode.runtime.phoenix import PhoenixServer, PhoenixStartError, PhoenixStatus
from geode.runtime.programs import register_program
from geode.runtime.registry import ProgramRegistry, Score
from geode.runtime.registry_trust import registry_key
from geode.runtime.runtime import Runtime, trace_id_of
from geode.runtime.settings import Settings
from geode.traces.records import TraceRecord
from geode.traces.sources import OtlpFileTraceSource

__all__ = [
    "AGENT_PROGRAM",
    "AGENT_REF",
    "DEFAULT_HELD_OUT",
    "DEFAULT_QUESTIONS",
    "DEFAULT_VALIDATION",
    "INCOMPLETE",
    "LOCAL_MAX_TOKENS",
    "PROJECT",
    "QUICK",
    "DemoOptions",
    "DemoParts",
    "DemoResult",
    "Progress",
    "Row",
    "run_demo",
    "workflow_program",
]

CORRECT_RUN_SCORE = 1.0
"""A training run counts as a success for crystallization when the metric gave it this score."""
AGENT_PROGRAM = "helpdesk-agent"
"""The name the agent's runs are traced (and mined) under."""
AGENT_REF = "geode.demo.app:agent"
"""How the workflow spec names the agent it falls back to (a zero-argument factory)."""
FEEDBACK_NAME = "correctness"


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
        self.run_dir = runs_dir(settings) / self.run_id
        self.result = DemoResult(self.run_id, self.run_dir, settings)
        # Validation questions are spread over the training list first; the agent's come from the rest.
        training = helpdesk.load_questions("train")
        self.validation = helpdesk.pick(training, min(options.validation, len(training) - 2))
        chosen = {q.id for q in self.validation}
        self.train = helpdesk.pick([q for q in training if q.id not in chosen], options.questions)
        chosen |= {q.id for q in self.train}
        # The training questions left over: more tuning for the recompile search (labelled, not run).
        self.extra_tuning = helpdesk.questions_dataset(
            [q for q in training if q.id not in chosen] if options.more_tuning else [], "helpdesk-tuning"
        )
        self.heldout = helpdesk.pick(helpdesk.load_questions("heldout"), options.held_out)
        self.gold = {q.question: q for q in helpdesk.load_questions()}
        self.heldout_data = helpdesk.questions_dataset(self.heldout, "helpdesk-heldout")
        self.validation_data = helpdesk.questions_dataset(self.validation, "helpdesk-validation")

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
            ingestor = Ingestor(
                store, embedder, chunker=helpdesk.helpdesk_chunker(), metadata=helpdesk.CHUNKING
            )
            report = ingestor.ingest(
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
        result.save(self.run_dir / "mined.jsonl")
        skipped = ", ".join(f"{n} {reason}" for reason, n in result.skipped.items() if n) or "none"
        self.say.info(
            f"{len(result.dataset)} examples from {result.traces_read} traces ({result.source_used}); "
            f"skipped: {skipped}"
        )
        labelled = self.label(result.dataset)
        labelled.save(self.run_dir / "labelled.jsonl")
        self.heldout_data.save(self.run_dir / "heldout.jsonl")
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
        scores = {
            tid: RunScore(score=score, source="metric") for tid, score in self.result.train_run_scores.items()
        }

        def attempt(min_route_runs: int) -> Crystallization:
            return crystallize(
                agent,
                traces,
                agent_ref=AGENT_REF,
                name="helpdesk-workflow",
                program=AGENT_PROGRAM,
                scores=scores,
                description=f"{len(traces)} demo runs in {source.description}",
                # Arguments: how the agent forms them (its completed runs), when its few correct runs
                # alone would leave the search query to an LM step.
                # No demos: on the 16 labelled training runs of a default run, the answer step without
                # the crystallized demos scored 25% against 6% with them, at a p50 of 1.9 s against 9.6 s
                # (the agent's correct answers are long passage copies, and the model learns to ramble).
                options=CrystallizeOptions(
                    success_threshold=CORRECT_RUN_SCORE,
                    min_route_runs=min_route_runs,
                    arg_evidence="completed",
                    max_demos=0,
                ),
            )

        # It learns from the runs the metric scored correct only: a wrong run must become neither the
        # pattern nor a demo. A pattern normally needs two correct runs; a single one is still better
        # than none. With no correct run there is nothing to learn from, and the agent stays.
        try:
            try:
                found = attempt(2)
            except CrystallizeError as err:
                if self.result.train_scores.count(CORRECT_RUN_SCORE) == 0:
                    raise
                self.say.warn(f"{err}; learning from the correct runs, even a pattern seen once")
                found = attempt(1)
        except CrystallizeError as err:
            return self.keep_agent(f"no workflow: {err}")
        cost = self.result.cost = check_cost(found)
        self.say.info(cost.describe())
        if not cost.cheaper:
            return self.keep_agent(f"no workflow: {cost.describe()}")
        found.save(self.run_dir / "workflow.json")
        atomic_write_text(self.run_dir / "workflow.md", found.report())
        for route in found.spec.routes:
            self.say.info(f"route {route.label}")
        return found

    def keep_agent(self, reason: str) -> None:
        """Crystallization would not help: say so, and the demo goes on with the agent alone."""
        self.result.kept_agent = reason
        self.result.skipped["crystallize"] = reason
        self.say.warn(f"{reason}; the demo keeps the agent")
        return None

    # 6
    def recompile(self, rt: Runtime, workflow: CrystallizedWorkflow, labelled: Dataset) -> Scored | None:
        extra = len(self.extra_tuning)
        self.say.stage(
            6,
            f"recompile the workflow: candidates scored on the {len(labelled)} labelled training runs"
            + (f" and {extra} other training questions" if extra else ""),
        )
        if len(labelled) < 2:
            reason = f"{len(labelled)} labelled example(s); recompiling needs at least 2"
            self.result.skipped["recompile"] = reason
            self.say.warn(f"not recompiled: {reason}")
            return None
        # Candidates learn from the runs (fit); they are chosen on every training question the gate
        # does not see (tune), so that one lucky question among 16 does not decide.
        tune = Dataset.from_records([*labelled.records, *self.extra_tuning.records], name="helpdesk-tuning")
        pricing = _pricing(rt)

        def score(program: dspy.Module, data: Dataset, label: str) -> EvalResult:
            with self.say.task(f"tune: {label}", len(data)) as update:
                return evaluate(
                    program,
                    data,
                    _counting(update),
                    program_name=workflow_program(self.base),
                    split="train",
                    pricing=pricing,
                )

        candidates = recompile_candidates(helpdesk.metric, demos=demo_count(workflow) > 0)
        if self.options.finetune:
            candidates.append(
                finetune_candidate(helpdesk.metric, rt.settings.lm_artifacts_dir, self.say.info)
            )
        # Candidates that learn (bootstrapping) call the LM while they are built: all of it in the runtime.
        with rt.batch():
            best, scored = search(
                workflow, candidates, fit=labelled, tune=tune, evaluate=score, log=self.say.info
            )
        self.result.search = [entry.summary() for entry in scored]
        if best.program is workflow:
            reason = "no candidate beat the workflow as crystallized on the training runs"
            self.result.skipped["recompile"] = reason
            self.say.info(reason)
            return None
        self.say.info(f"best on the training runs: {best.candidate.name}")
        return best

    # 7
    def evaluate(self, rt: Runtime, programs: Sequence[tuple[str, str, dspy.Module]]) -> list[Row]:
        self.say.stage(
            7,
            f"evaluate {', '.join(p[0] for p in programs)} on the {len(self.heldout_data)} held-out questions",
        )
        return [
            Row(label, name, self.score(rt, module, self.heldout_data, label, name, "heldout"))
            for label, name, module in programs
        ]

    def score(
        self, rt: Runtime, module: dspy.Module, data: Dataset, label: str, name: str, split: str
    ) -> EvalResult:
        with self.say.task(f"{split}: {label}", len(data)) as update, rt.batch():
            result = evaluate(
                module, data, _counting(update), program_name=name, split=split, pricing=_pricing(rt)
            )
        self.say.info(f"{label}: {100 * result.score:.0f}% of {result.n} ({result.lm_calls} LM calls)")
        return result

    # 8
    def promote(
        self,
        rt: Runtime,
        registry: ProgramRegistry,
        workflow: dspy.Module,
        best: Scored | None,
    ) -> Gate:
        name = workflow_program(self.base)
        self.say.stage(
            8,
            f"promote the recompiled workflow if it passes the gate ({len(self.validation_data)} validation questions)",
        )
        base_row, cand_row = self.result.row("workflow"), self.result.row("recompiled")
        if base_row is None:
            return Gate("none", "nothing to promote: there is no workflow")
        base_val = self.score(rt, workflow, self.validation_data, "workflow", name, "validation")
        base = registry.save(
            name,
            workflow,
            scores=[Score.heldout(base_row.result), validation_score(base_val)],
            note="crystallized by geode demo",
        )
        self.result.rows[self.result.rows.index(base_row)] = replace(base_row, version=base.version)
        if best is None or cand_row is None:
            return Gate("none", "no recompiled candidate to promote", serving=base.version)
        cand_val = self.score(rt, best.program, self.validation_data, "recompiled", name, "validation")
        cand = registry.save(
            name,
            best.program,
            parent=base.version,
            scores=[Score.heldout(cand_row.result), validation_score(cand_val)],
            optimizer=best.candidate.optimizer,
            note=f"geode demo: {best.candidate.description}",
            lm_artifact=lm_artifact_of(best.program),
        )
        self.result.rows[self.result.rows.index(cand_row)] = replace(cand_row, version=cand.version)
        return gate(registry, name, cand.version, base.version, workflow, cand_val, base_val)


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
    started = time.perf_counter()
    opts = options or DemoOptions()
    given = parts or DemoParts()
    say = progress or Progress()
    demo = _Demo(settings, opts, given, say)
    registry = ProgramRegistry(settings.programs_dir, key=registry_key(settings))
    server = given.phoenix or PhoenixServer.from_settings(settings)
    for path in clean_incomplete(settings):
        say.info(f"removed {path.name} left by an interrupted run")
    with demo.timed("phoenix"):
        status = demo.start_phoenix(server)
    run_settings = demo_settings(settings, demo.run_dir, status.url if status else None)
    open_run(demo.run_dir)
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
            start_over(settings, rt.store, registry)
            open_run(demo.run_dir)
            say.info("--fresh: dropped the demo's collection, runs and workflow versions")
        with demo.timed("ingest"):
            demo.result.ingest = demo.ingest(rt.store, rt.embedder)
        demo.result.phoenix = demo.wait_phoenix(server, status)
        _loop(demo, rt, registry, run_settings)
    finally:
        rt.close()
    return _finish(demo, write_report, started)


def _loop(demo: _Demo, rt: Runtime, registry: ProgramRegistry, run_settings: Settings) -> None:
    retriever = Retriever(rt.store, rt.embedder, helpdesk.COLLECTION, k=2)
    # The embedded model misuses the calculator (sentences as expressions) instead of searching.
    agent = helpdesk.build_agent(retriever, calculator=not is_local(rt.lm))
    register_program(AGENT_PROGRAM, agent)
    with demo.timed("agent runs"):
        demo.run_agent(rt)
    source = OtlpFileTraceSource(demo.run_dir / "spans.jsonl")
    with demo.timed("mine"):
        demo.result.mining, demo.result.labelled = demo.mine_runs(source, run_settings)
    with demo.timed("crystallize"):
        demo.result.crystallization = demo.crystallize(agent, source)
    name = workflow_program(demo.base)
    programs: list[tuple[str, str, dspy.Module]] = [("agent", AGENT_PROGRAM, agent)]
    workflow: CrystallizedWorkflow | None = None
    best: Scored | None = None
    if demo.result.crystallization is not None:
        workflow = demo.result.crystallization.workflow()
        register_program(name, workflow)
        programs.append(("workflow", name, workflow))
        with demo.timed("recompile"):
            best = demo.recompile(rt, workflow, demo.result.labelled or Dataset.from_records([]))
        if best is not None:
            programs.append(("recompiled", name, best.program))
    with demo.timed("evaluate"):
        demo.result.rows = demo.evaluate(rt, programs)
    with demo.timed("promote"):
        if workflow is not None:
            demo.result.gate = demo.promote(rt, registry, workflow, best)
        else:
            demo.result.gate = Gate(
                "none", f"nothing to promote: the demo keeps the agent ({demo.result.kept_agent})"
            )
        demo.say.info(demo.result.gate.reason)


def _finish(
    demo: _Demo, write_report: Callable[[DemoResult, Path], None] | None, started: float
) -> DemoResult:
    result = demo.result
    settings = demo.base
    if result.crystallization is not None:
        # The published spec is what `geode run <home>/demo/workflow.json` serves.
        result.crystallization.save(result.workflow_spec)
    result.total_seconds = time.perf_counter() - started
    if write_report is not None:
        final = settings.reports_dir / f"demo-{demo.run_id}"
        staging = settings.reports_dir / f".demo-{demo.run_id}.tmp"
        result.report = final / "index.html"
        try:
            write_report(result, staging)
            os.replace(staging, final)
        except BaseException:
            result.report = None
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    text = json.dumps(result.summary(), indent=2, default=str) + "\n"
    atomic_write_text(demo.run_dir / "summary.json", text)
    # The run is complete once its marker is gone; only then does latest.json point at it.
    (demo.run_dir / INCOMPLETE).unlink()
    atomic_write_text(demo_dir(settings) / "latest.json", text)
    return result


def comparison(result: DemoResult) -> ProgramComparison | None:
    """Agent vs crystallized workflow on the held-out questions, when both were evaluated."""
    agent, workflow = result.row("agent"), result.row("workflow")
    if agent is None or workflow is None:
        return None
    return ProgramComparison(agent.result, workflow.result)
