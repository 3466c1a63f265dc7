"""The composition root: :class:`Runtime` builds Geode's parts once and runs programs with them.

An application embeds one ``Runtime``. It owns the LM, the tracer provider and instrumentation, the
vector store and the program registry, built from :class:`~geode.runtime.settings.Settings` or passed
in explicitly. Every call runs under its own ``dspy.context``; nothing here calls ``dspy.configure``
per request, so concurrent calls with different settings never see each other's LM or callbacks.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any, Literal

import dspy

from geode.errors import InputError
from geode.runtime.dspy_errors import DSPY_ERRORS, translate_dspy_error
from geode.runtime.programs import ProgramRef, ResolvedProgram, resolve
from geode.runtime.registry.active import ActivePrograms, ServedProgram
from geode.runtime.settings import Settings
from geode.traces.context import RunIdentity, capture_trace_ids, run_identity

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

    from geode.retrieval import Embedder, Retriever, Store
    from geode.runtime.feedback import FeedbackOutbox, FeedbackReceipt

    # The registry and the state database import SQLAlchemy (0.11 s): loaded when first opened.
    from geode.runtime.registry.promotion import ProgramRegistry
    from geode.runtime.state import SqlState
    from geode.runtime.tracing import RuntimeTracing, TracingPipeline

__all__ = ["Runtime", "trace_id_of"]

# A private attribute, as DSPy keeps `_lm_usage`: a public one would become an output field.
_TRACE_ATTR = "_geode_trace_id"


def trace_id_of(prediction: Any) -> str | None:
    """The trace id (32 hex digits) of the run that produced a prediction, if it was traced.

    Set by :meth:`Runtime.run` and :meth:`Runtime.arun`; pass it to :meth:`Runtime.feedback`, to
    ``geode trace show`` or search for it in Phoenix.

    Example:
        >>> trace_id_of(dspy.Prediction(answer="x")) is None
        True
    """
    value = getattr(prediction, _TRACE_ATTR, None)
    return value if isinstance(value, str) else None


def _stamp(prediction: Any, trace_ids: Sequence[str]) -> Any:
    if trace_ids and isinstance(prediction, dspy.Prediction):
        setattr(prediction, _TRACE_ATTR, trace_ids[0])
    return prediction


@contextmanager
def _translate_errors(rt: Runtime, resolved: ResolvedProgram) -> Iterator[None]:
    """Turn DSPy's LM and parse errors into Geode errors that say what to do."""
    try:
        yield
    except DSPY_ERRORS as err:
        # The model is read only on failure: reading rt.lm builds the LM.
        model = getattr(rt.lm, "model", "?")
        translated = translate_dspy_error(err, resolved.name, audience="caller", model=model)
        assert translated is not None  # every DSPY_ERRORS exception translates
        raise translated from err


class Runtime:
    """Hosts DSPy programs: runs them on the configured LM, traced, with per-call settings.

    Args:
        settings: Settings to build parts from; default ``Settings()`` (env vars, then defaults).
        lm: Use this LM instead of building one from ``settings.lm``.
        adapter: Use this adapter; default: ``settings.lm.adapter`` (``auto``:
            :class:`~geode.adapters.SmallModelAdapter` for the embedded model, DSPy's default otherwise).
        registry: Use this program registry; default: one under ``settings.programs_dir``.
        store: Use this vector store (the caller closes it); default: built from ``settings.retrieval``.
        embedder: Use this embedder; default: built from ``settings.retrieval``.
        tracer_provider: Send spans to this OpenTelemetry tracer provider (you own it: ``close()``
            flushes it, never shuts it down); default: the export pipeline built from
            ``settings.tracing`` (Phoenix over OTLP/HTTP and/or an OTLP-JSON file), or none if
            tracing is disabled.

    Example:
        >>> import dspy, geode
        >>> from geode.testing import ScriptedLM
        >>> rt = geode.Runtime(lm=ScriptedLM([{"answer": "Paris"}]), settings=geode.Settings(tracing={"enabled": False}))
        >>> rt.run(dspy.Predict("question -> answer"), question="Capital of France?").answer
        'Paris'
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        lm: dspy.BaseLM | None = None,
        adapter: dspy.Adapter | None = None,
        registry: ProgramRegistry | None = None,
        store: Store | None = None,
        embedder: Embedder | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self.settings = settings if settings is not None else Settings()
        from geode.runtime.tracing import RuntimeTracing

        # Built first: a bad tracing setting fails construction before anything else is opened.
        self._tracing: RuntimeTracing = RuntimeTracing(self.settings, tracer_provider)
        self._store = store
        self._owns_store = store is None
        self._embedder = embedder
        self._registry = registry
        self._active: ActivePrograms | None = None
        self._lm = lm
        self._adapter = adapter
        self._lock = threading.RLock()  # re-entrant: lazy parts build other lazy parts
        self._programs: dict[str, ResolvedProgram] = {}
        self._feedback: FeedbackOutbox | None = None
        self._artifact_lms: dict[str, dspy.BaseLM] = {}

    # -- parts -------------------------------------------------------------------------------------

    @property
    def tracer_provider(self) -> TracerProvider | None:
        """Where this runtime's spans go (``None`` when tracing is disabled)."""
        return self._tracing.provider

    @property
    def export_pipeline(self) -> TracingPipeline | None:
        """The span export this runtime built from settings: destinations and span counts.

        ``export_pipeline.stats`` says how many spans were queued, exported and dropped;
        ``endpoint`` and ``otlp_file`` say where they go. ``None`` when tracing is disabled or the
        caller passed its own ``tracer_provider`` (the caller then owns export).
        """
        return self._tracing.pipeline

    @property
    def lm(self) -> dspy.BaseLM:
        """The LM every call runs on (built on first use)."""
        if self._lm is None:
            with self._lock:
                if self._lm is None:
                    from geode.runtime.lm import build_lm, use_response_cache

                    if self.settings.lm.cache:
                        use_response_cache(self.settings.cache_dir)
                    self._lm = build_lm(self.settings.lm)
        return self._lm

    @property
    def adapter(self) -> dspy.Adapter | None:
        """The adapter every call uses; ``None`` means DSPy's default."""
        if self._adapter is None:
            from geode.runtime.lm import build_adapter

            self._adapter = build_adapter(self.settings.lm.adapter, self.lm)
        return self._adapter

    @property
    def store(self) -> Store:
        """The vector store (opened on first use; the embedded one is locked to this process)."""
        if self._store is None:
            with self._lock:
                if self._store is None:
                    from geode.runtime.stores import build_store

                    self._store = build_store(self.settings)
        return self._store

    @property
    def embedder(self) -> Embedder:
        """The embedder for ingestion and retrieval (the local model loads on first embedding)."""
        if self._embedder is None:
            with self._lock:
                if self._embedder is None:
                    from geode.runtime.stores import build_embedder

                    self._embedder = build_embedder(self.settings.retrieval)
        return self._embedder

    def retriever(self, collection: str | None = None, k: int = 5) -> Retriever:
        """A ``geode.Retriever`` over ``collection`` (default: ``settings.retrieval.collection``)."""
        from geode.runtime.stores import build_retriever

        return build_retriever(self.store, self.embedder, self.settings.retrieval, collection=collection, k=k)

    # -- programs ----------------------------------------------------------------------------------

    def resolve(self, program: ProgramRef) -> ResolvedProgram:
        """Resolve a program reference once; later calls reuse the same module instance."""
        if not isinstance(program, str):
            return resolve(program)
        with self._lock:
            cached = self._programs.get(program)
        if cached is not None:
            return cached
        resolved = resolve(program)
        with self._lock:
            return self._programs.setdefault(program, resolved)

    @property
    def state(self) -> SqlState:
        """The state database (sessions, served runs, feedback outbox, registry pointers).

        ``GEODE_STATE_URL`` (PostgreSQL for replicas on several hosts), else ``<home>/state.db``;
        opened and migrated once per process.
        """
        from geode.runtime.state import open_state

        cfg = self.settings.state
        return open_state(self.settings.state_url, schema_name=cfg.schema_name, poll_s=cfg.poll_s)

    @property
    def registry(self) -> ProgramRegistry:
        """The program registry: versions, the active pointer, promotion and rollback."""
        if self._registry is None:
            with self._lock:
                if self._registry is None:
                    from geode.runtime.registry.promotion import ProgramRegistry
                    from geode.runtime.registry_trust import registry_key

                    self._registry = ProgramRegistry(
                        self.settings.programs_dir,
                        state=self.state,
                        key=registry_key(self.settings),
                    )
        return self._registry

    def serve(self, program: ProgramRef) -> ServedProgram:
        """The module that answers for ``program`` and its version.

        A string reference whose program has an active version in the registry is served from that
        version's state (loaded into a copy of the module, reloaded when the active pointer changes;
        if it fails to load, the version served before keeps serving). A ``dspy.Module`` passed
        directly is served as given.

        Until a registry exists here (a state URL, ``<home>/state.db`` or the programs folder), the
        base program serves without opening one: asked again on every call, so a version promoted
        later by another process is still seen.
        """
        resolved = self.resolve(program)
        if not isinstance(program, str):
            return ServedProgram(resolved.name, resolved.module, None)
        if self._active is None and self._registry is None and not self._may_have_versions():
            # Opening the registry would import SQLAlchemy and create the state database and a
            # signing key just to learn that nothing is registered: most of `geode run`'s start-up.
            return ServedProgram(resolved.name, resolved.module, None)
        if self._active is None:
            with self._lock:
                if self._active is None:
                    self._active = ActivePrograms(self.registry, lm_loader=self.artifact_lm)
        return self._active.get(resolved)

    def _may_have_versions(self) -> bool:
        """Whether a registry may hold an active version: anything but "no registry here at all"."""
        settings = self.settings
        try:
            return (
                settings.state.url is not None
                or settings.state_file.exists()
                or settings.programs_dir.exists()
            )
        except OSError:
            # A home that cannot be looked into: opening the registry reports it as it always did.
            return True

    def artifact_lm(self, artifact_id: str) -> dspy.BaseLM:
        """The embedded LM on a stored LM artifact's weights (loaded once per artifact, with ``settings.lm``).

        Raises:
            ModelFileError: The artifact is missing, or its weights changed since they were stored.
        """
        with self._lock:
            lm = self._artifact_lms.get(artifact_id)
            if lm is None:
                from geode.runtime.finetune.artifacts import LMArtifactStore
                from geode.runtime.lm import build_lm

                artifact = LMArtifactStore(self.settings.lm_artifacts_dir).get(artifact_id)
                lm_settings = self.settings.lm.model_copy(
                    update={"model": "local", "model_path": artifact.path}
                )
                lm = self._artifact_lms[artifact_id] = build_lm(lm_settings)
        return lm

    @contextmanager
    def _call(
        self,
        program: ProgramRef,
        inputs: Mapping[str, Any],
        *,
        session_id: str | None,
        user_id: str | None,
        metadata: Mapping[str, Any] | None,
        tags: Sequence[str] | None,
    ) -> Iterator[tuple[ServedProgram, list[str]]]:
        """Everything one :meth:`run`/:meth:`arun` call runs under; yields the program and trace ids."""
        resolved = self.resolve(program)
        if not inputs:
            raise InputError(f"no inputs given for program {resolved.name!r}")
        served = self.serve(program)
        identity = RunIdentity(
            program=resolved.name,
            aliases=resolved.aliases,
            version=served.version,
            session_id=session_id,
            user_id=user_id,
            metadata=dict(metadata or {}),
            tags=tuple(tags or ()),
        )
        with (
            run_identity(identity),
            self.context(),
            self._tracing.scope(),
            capture_trace_ids() as trace_ids,
            _translate_errors(self, resolved),
        ):
            yield served, trace_ids

    def context(self, **overrides: Any) -> Any:
        """A ``dspy.context`` with this runtime's LM and adapter (plus ``overrides``) for one call."""
        return dspy.context(**self.context_values(**overrides))

    def context_values(self, **overrides: Any) -> dict[str, Any]:
        """The DSPy settings :meth:`context` applies: this runtime's LM, adapter and callbacks, then ``overrides``.

        For a caller that adds settings of its own and enters them all in one ``dspy.context`` (each
        ``dspy.context`` copies every DSPy setting: the server enters one per request, not three).
        """
        values: dict[str, Any] = {"lm": self.lm, "track_usage": True}
        if self.adapter is not None:
            values["adapter"] = self.adapter
        from geode.runtime.instrumentation import is_instrumented, with_callback

        if is_instrumented():
            # An outer dspy.context(callbacks=[...]) replaces DSPy's global callbacks; keep Geode's.
            values["callbacks"] = with_callback(dspy.settings.get("callbacks"))
        values.update(overrides)
        return values

    def tracing_scope(self) -> AbstractContextManager[None]:
        """Route the spans of the DSPy calls made in the block to this runtime's tracer provider.

        :meth:`batch` is :meth:`context` and this together.
        """
        return self._tracing.scope()

    @contextmanager
    def batch(self, **overrides: Any) -> Iterator[None]:
        """Run a block of many calls (an evaluation, a recompilation) as :meth:`run` runs one call.

        Inside, DSPy calls use this runtime's LM, adapter and callbacks, and their spans go to this
        runtime's tracer provider; ``dspy.Evaluate`` and the optimizers' worker threads inherit both.

        Args:
            **overrides: DSPy settings for the block on top of the runtime's (``disable_history=True``).
        """
        with self.context(**overrides), self.tracing_scope():
            yield

    def run(
        self,
        program: ProgramRef,
        /,
        *,
        session_id: str | None = None,
        user_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        tags: Sequence[str] | None = None,
        **inputs: Any,
    ) -> dspy.Prediction:
        """Run a program on this runtime's LM and return its prediction.

        Args:
            program: A ``dspy.Module``, a registered name, or ``module:attribute``.
            session_id: Groups calls into a conversation (``session.id`` on spans).
            user_id: The end user (``user.id`` on spans).
            metadata: Free-form metadata recorded on the run's spans.
            tags: Tags recorded on the run's spans.
            **inputs: The program's input fields.

        Returns:
            The program's ``dspy.Prediction``; :func:`trace_id_of` gives its trace id when traced.
        """
        call = self._call(
            program, inputs, session_id=session_id, user_id=user_id, metadata=metadata, tags=tags
        )
        with call as (served, trace_ids):
            return _stamp(served.module(**inputs), trace_ids)

    async def arun(
        self,
        program: ProgramRef,
        /,
        *,
        session_id: str | None = None,
        user_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        tags: Sequence[str] | None = None,
        **inputs: Any,
    ) -> dspy.Prediction:
        """Async :meth:`run`: awaits the program's ``acall`` under its own ``dspy.context``."""
        call = self._call(
            program, inputs, session_id=session_id, user_id=user_id, metadata=metadata, tags=tags
        )
        with call as (served, trace_ids):
            return _stamp(await served.module.acall(**inputs), trace_ids)

    def feedback(
        self,
        run: str | dspy.Prediction,
        /,
        *,
        score: float | None = None,
        label: str | None = None,
        comment: str | None = None,
        name: str = "user_feedback",
        annotator_kind: Literal["HUMAN", "LLM", "CODE"] = "HUMAN",
        program: str | None = None,
        wait_s: float = 0.0,
    ) -> FeedbackReceipt:
        """Record feedback on a run: a Phoenix annotation on its root span, kept locally until then.

        The feedback is appended to ``<home>/feedback/feedback.jsonl`` at once (``geode mine`` reads it
        as labels) and sent to Phoenix in the background; while Phoenix is down it waits in an outbox
        and is re-sent when Phoenix is back. Never raises because Phoenix is down.

        Args:
            run: The run's trace id, or the prediction :meth:`run` returned.
            score: A score (``1``/``0`` for thumbs up/down, or any number).
            label: A label (``correct``, ``thumbs_down``...).
            comment: Free text; mining hands it to GEPA as textual feedback.
            name: The annotation's name in Phoenix.
            annotator_kind: ``HUMAN``, ``LLM`` (a judge) or ``CODE`` (a check).
            program: The run's program, needed only with per-program Phoenix projects.
            wait_s: Wait up to this long for Phoenix to store it (default: return at once). Waiting first
                sends this runtime's queued spans; it still ends early while Phoenix has not ingested the
                run (the record stays queued and is re-sent).

        Raises:
            InputError: No score, label or comment, or ``run`` is not a traced run.
        """
        from geode.runtime.feedback import make_feedback_record

        trace_id = run if isinstance(run, str) else trace_id_of(run)
        if trace_id is None:
            raise InputError(
                "this prediction carries no trace id (was it run with tracing off?)",
                hint="pass the trace id, or run the program with tracing enabled",
            )
        record = make_feedback_record(
            trace_id,
            score=score,
            label=label,
            comment=comment,
            name=name,
            annotator_kind=annotator_kind,
            program=program,
        )
        pipeline = self._tracing.pipeline
        if wait_s > 0 and pipeline is not None:
            # The run's spans may still sit in this runtime's export queue; Phoenix can only attach the
            # annotation once it has them, so a caller who waits gets them sent first.
            pipeline.force_flush(timeout_s=wait_s)
        return self.feedback_outbox.submit(record, timeout_s=wait_s)

    @property
    def feedback_outbox(self) -> FeedbackOutbox:
        """Where :meth:`feedback` and ``POST /feedback`` put records: the local log, then Phoenix.

        Built on first use under ``<home>/feedback``; it delivers to the Phoenix this runtime traces
        to (the configured collector, else a local Phoenix that is up), re-sending until it is taken.
        """
        from geode.runtime.feedback import FeedbackOutbox

        with self._lock:
            if self._feedback is None:
                self._feedback = FeedbackOutbox.for_settings(
                    self.settings, timeout_s=self.settings.serve.feedback_timeout_s, state=self.state
                )
            return self._feedback

    def close(self) -> None:
        """Flush telemetry (bounded by a deadline) and release the store."""
        self._tracing.close()
        if self._feedback is not None:
            self._feedback.close(timeout_s=self.settings.tracing.export_timeout_s)
        store, self._store = self._store, None
        if store is not None and self._owns_store:
            store.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
