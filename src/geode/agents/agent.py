"""``geode.Agent``: a ReAct agent you can run in production, and drive with a small local model.

The loop is DSPy's ReAct (same prompt shape, same ``react``/``extract.predict`` predictors, same
``trajectory`` keys, so optimizers and saved state carry over), with what ReAct leaves out:

- **Constrained steps.** ``next_tool_name`` is an enum of the allowed tools and ``next_tool_args`` a
  union of the tools' argument schemas, so the adapter (``geode.adapters.SmallModelAdapter`` or
  ``dspy.JSONAdapter``) hands the LM a complete JSON schema
  and a local model's constrained decoding can only produce well-formed steps. For grammar-constrained
  local models the schema is tightened further (each tool paired with its own arguments, free text
  capped): see ``grammar_schema``.
- **An allow-list enforced in code.** A step naming any other tool (a confused model, or text injected
  through a tool's output) runs nothing; the model is told which tools exist.
- **Guarded tools.** Arguments are validated before a tool runs, every call has a timeout, and tool
  errors reach the model scrubbed of secrets and file paths (see :mod:`geode.agents.tools`).
- **Budgets.** Iterations, LM calls, tokens and seconds; running out ends the run cleanly.
- **Recovery.** Unparseable model output becomes a corrective observation instead of an exception;
  a repeated identical tool call ends the loop with what the run has (small models loop forever
  otherwise).
- **Typed records.** Each step is an :class:`~geode.agents.steps.AgentStep`; the prediction carries
  ``steps`` and a :class:`~geode.agents.steps.Termination` next to ``trajectory``.

Each iteration runs as a call of a child module (its own span, named ``iteration N``) and tools are
called through ``dspy.Tool`` so the runtime's instrumentation records a TOOL span for each call.

This module holds the agent itself (its options, the loop and the final extraction); the step
signature is in :mod:`geode.agents.step_schema`, its tightening for grammars in
:mod:`geode.agents.grammar`, a run's state (budgets, deadline, trajectory, step records) in
:mod:`geode.agents.run` and the iteration module in :mod:`geode.agents.iteration`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, ClassVar

import dspy
from dspy.signatures.signature import ensure_signature, make_signature
from dspy.utils.exceptions import AdapterParseError, ContextWindowExceededError

from geode.adapters import SmallModelAdapter
from geode.agents.grammar import _GrammarAdapter, _SmallGrammarAdapter
from geode.agents.iteration import _INDEX_ARG, _Iteration
from geode.agents.run import _Run
from geode.agents.scrub import scrub
from geode.agents.step_schema import FINISH, _step_signature, _typed_fields
from geode.agents.steps import AgentStep as AgentStep  # re-exported: imported from here before the split
from geode.agents.steps import Budget, Termination, TerminationReason
from geode.agents.steps import StepOutcome as StepOutcome  # re-exported, like AgentStep
from geode.agents.tools import DEFAULT_TOOL_TIMEOUT_S, GuardedTool, ToolLike, guard
from geode.errors import BudgetExceededError, ConfigError, InputError
from geode.traces.vocab import GeodeAttributes, SpanAttributes

__all__ = ["Agent"]

RESERVED_INPUTS = frozenset({"trajectory", _INDEX_ARG, "max_iters"})
"""Input names the agent uses itself; a signature may not declare them."""


class _Extract(dspy.Module):
    """The final extraction without reasoning: one ``Predict`` where ``ChainOfThought`` keeps its own."""

    def __init__(self, signature: type[dspy.Signature]) -> None:
        super().__init__()
        self.predict = dspy.Predict(signature)

    def forward(self, **kwargs: Any) -> dspy.Prediction:
        return self.predict(**kwargs)

    async def aforward(self, **kwargs: Any) -> dspy.Prediction:
        return await self.predict.acall(**kwargs)


class Agent(dspy.Module):
    """A ReAct agent with budgets, guarded tools, constrained steps and typed step records.

    Args:
        signature: What the agent is for, e.g. ``"question -> answer"`` or a ``dspy.Signature``.
        tools: Typed functions (docstring = description), ``dspy.Tool`` or
            :class:`~geode.agents.tools.GuardedTool` objects. Only these can ever be called.
        name: The agent's name: on its AGENT span, and the program's name wherever it runs (spans,
            registry, ``geode trace show``/``mine``/``crystallize``), whether run as an instance, by
            reference or served. Default: ``agent`` on the span, and the reference as program name.
        allow: Optional allow-list of tool names: only these of ``tools`` are offered and callable
            (for agents built from a shared toolbox). Naming a tool that is not in ``tools`` is an error.
        budget: Limits per run; default ``Budget()`` (10 iterations, no other limit).
        tool_timeout_s: Timeout for tools that do not set their own (plain functions, ``dspy.Tool``).
        max_observation_chars: Longer tool results are cut before the model sees them.
        max_parse_failures: End the run after this many consecutive unparseable model replies.
        stop_on_repeated_call: End the loop when the model repeats an identical tool call (the
            repeated call is not executed; the answer is extracted from what the run has).
        grammar_schema: Tighten the JSON schema for grammar-constrained decoding: each tool name is
            paired with its own argument schema (a top-level ``anyOf`` of whole steps, so a small model
            cannot give one tool another's arguments), and the free-text ``next_thought`` (and the
            extraction's ``reasoning`` where the adapter asks for it; ``SmallModelAdapter`` leaves it out
            on small local models) is capped at ``max_thought_chars``, so a model that starts
            repeating itself still completes the step. Applies with :class:`~geode.adapters.SmallModelAdapter`
            and ``dspy.JSONAdapter``. Default (``None``): on for LMs that declare ``small_local_model``
            (``geode.LocalLM``), off otherwise, since hosted structured-output APIs reject a top-level
            ``anyOf`` and ``maxLength``.
        max_thought_chars: The cap on free text when ``grammar_schema`` is on.
        tool_first: Until a tool call has succeeded, ``finish`` is not offered (like
            ``tool_choice="required"`` on an API's first turn): with ``grammar_schema`` it is left out
            of the step's schema; otherwise a ``finish`` is refused with a note to call a tool. For
            agents whose answers must come from their tools: a small model otherwise answers from
            its own thought without looking anything up.
        extract_thoughts: Show the steps' thoughts to the final extraction of the outputs (as
            ``dspy.ReAct`` does). Off, the extraction reads the tool calls and their results only: a
            small model's thought is often a guess written before the search ("...costs $1.00"), and
            the extraction copies it over the result it got.
        extract_reasoning: Extract the outputs with a ``reasoning`` field first (``dspy.ChainOfThought``,
            as ``dspy.ReAct`` does). Off, one ``dspy.Predict`` writes the outputs directly: a small model's
            reasoning wanders off the passages and the answer follows it.

    The prediction has the signature's outputs plus ``trajectory`` (DSPy ReAct's dict), ``steps``
    (a tuple of :class:`~geode.agents.steps.AgentStep`) and ``termination`` (a
    :class:`~geode.agents.steps.Termination`). Outputs are ``None`` when they could not be
    extracted (``termination.extracted`` is then ``False``).

    Example:
        >>> import dspy, geode
        >>> from geode.testing import ScriptedLM
        >>> def lookup_stock(item: str) -> int:
        ...     '''Units of an item in stock.'''
        ...     return {"widget": 3}[item]
        >>> agent = geode.Agent("question -> answer", tools=[lookup_stock])
        >>> lm = ScriptedLM([
        ...     {"next_thought": "Look it up.", "next_tool_name": "lookup_stock", "next_tool_args": {"item": "widget"}},
        ...     {"next_thought": "Done.", "next_tool_name": "finish", "next_tool_args": {}},
        ...     {"reasoning": "The tool said 3.", "answer": "3"},
        ... ])
        >>> with dspy.context(lm=lm):
        ...     pred = agent(question="How many widgets are in stock?")
        >>> pred.answer, pred.termination.reason.value, pred.steps[0].observation
        ('3', 'finish', '3')
    """

    geode_span_kind: ClassVar[str] = "AGENT"

    def __init__(
        self,
        signature: str | type[dspy.Signature],
        tools: Sequence[ToolLike],
        *,
        name: str | None = None,
        allow: Collection[str] | None = None,
        budget: Budget | None = None,
        tool_timeout_s: float | None = DEFAULT_TOOL_TIMEOUT_S,
        max_observation_chars: int = 2000,
        max_parse_failures: int = 3,
        stop_on_repeated_call: bool = True,
        grammar_schema: bool | None = None,
        max_thought_chars: int = 400,
        tool_first: bool = False,
        extract_thoughts: bool = True,
        extract_reasoning: bool = True,
    ) -> None:
        super().__init__()
        resolved = ensure_signature(signature)
        if resolved is None:
            raise ConfigError("Agent needs a signature, e.g. 'question -> answer'")
        clashes = sorted(RESERVED_INPUTS & resolved.input_fields.keys())
        if clashes:
            raise ConfigError(
                f"Agent signature inputs may not be named {', '.join(clashes)}", hint="rename them"
            )
        self.signature: type[dspy.Signature] = resolved
        self.name = name or "agent"
        # A name given here is the program's name on spans, in the registry and in every command
        # (geode.runtime.programs.declared_name); the default "agent" names no program in particular.
        self.geode_program_name = name
        self.budget = budget if budget is not None else Budget()
        if max_parse_failures < 1:
            raise ConfigError(f"max_parse_failures must be at least 1, got {max_parse_failures}")
        if max_observation_chars < 100:
            raise ConfigError(f"max_observation_chars must be at least 100, got {max_observation_chars}")
        self.max_parse_failures = max_parse_failures
        self.max_observation_chars = max_observation_chars
        self.stop_on_repeated_call = stop_on_repeated_call
        if max_thought_chars < 20:
            raise ConfigError(f"max_thought_chars must be at least 20, got {max_thought_chars}")
        self.grammar_schema = grammar_schema
        self.max_thought_chars = max_thought_chars
        self.tool_first = tool_first
        self.extract_thoughts = extract_thoughts
        self.tools = _allowed_tools([guard(t, timeout_s=tool_timeout_s) for t in tools], allow)
        self.tool_names: tuple[str, ...] = (*self.tools, FINISH)

        # Predictor names match dspy.ReAct's (`react`, `extract.predict`) so saved state and
        # optimizer tooling carry over; `react` is assigned before the iteration module that shares it.
        self.react = dspy.Predict(_step_signature(self.signature, self.tools))
        extract_signature = make_signature(
            _typed_fields({**self.signature.input_fields, **self.signature.output_fields}),
            self.signature.instructions,
        ).append("trajectory", dspy.InputField(), type_=str)
        # Without reasoning, a module holding one Predict at `.predict`: the predictor keeps ChainOfThought's
        # name (`extract.predict`), so saved state and optimizers see the same layout either way.
        self.extract = (
            dspy.ChainOfThought(extract_signature) if extract_reasoning else _Extract(extract_signature)
        )
        self.iteration = _Iteration(self.react)

    # -- tracing hooks --

    def geode_span_attributes(self, inputs: Mapping[str, Any], outputs: Any) -> dict[str, Any]:
        """Name, output fields, termination reason and iteration count for the AGENT span."""
        attributes: dict[str, Any] = {
            SpanAttributes.AGENT_NAME: self.name,
            GeodeAttributes.OUTPUT_FIELDS: tuple(self.signature.output_fields),
        }
        termination = outputs.get("termination") if isinstance(outputs, dspy.Prediction) else None
        if isinstance(termination, Termination):
            attributes[GeodeAttributes.AGENT_TERMINATION] = termination.reason.value
            attributes[GeodeAttributes.AGENT_TERMINATION_DETAIL] = termination.detail
            attributes[GeodeAttributes.AGENT_ITERATIONS] = termination.iterations
        return attributes

    # -- running --

    def _grammar_schema_on(self) -> bool:
        if self.grammar_schema is not None:
            return self.grammar_schema
        return bool(getattr(dspy.settings.lm, "small_local_model", False))

    def grammar_adapter(self, *, no_finish: bool = False) -> AbstractContextManager[Any]:
        """Internal: the context an LM call of this agent runs in (see ``grammar_schema``).

        ``no_finish``: the call is a first step of a ``tool_first`` agent (``finish`` is not offered).
        """
        adapter = dspy.settings.adapter
        if not self._grammar_schema_on() or isinstance(adapter, _GrammarAdapter | _SmallGrammarAdapter):
            return nullcontext()
        if isinstance(adapter, SmallModelAdapter):
            return dspy.context(
                adapter=_SmallGrammarAdapter(adapter, self.max_thought_chars, no_finish=no_finish)
            )
        if isinstance(adapter, dspy.JSONAdapter):
            return dspy.context(adapter=_GrammarAdapter(adapter, self.max_thought_chars, no_finish=no_finish))
        return nullcontext()

    def _start(self, inputs: dict[str, Any]) -> _Run:
        max_iters = inputs.pop("max_iters", None)
        missing = [k for k in self.signature.input_fields if k not in inputs]
        if missing:
            raise InputError(f"agent {self.name!r} is missing inputs: {', '.join(missing)}")
        unknown = [k for k in inputs if k not in self.signature.input_fields]
        if unknown:
            raise InputError(
                f"agent {self.name!r} got unknown inputs: {', '.join(unknown)}",
                hint=f"its inputs are: {', '.join(self.signature.input_fields)}",
            )
        if max_iters is not None and (not isinstance(max_iters, int) or max_iters < 1):
            raise InputError(f"max_iters must be a positive integer, got {max_iters!r}")
        return _Run(self, inputs, max_iters or self.budget.max_iters)

    def forward(self, **inputs: Any) -> dspy.Prediction:
        """Run the agent on its signature's inputs (``max_iters=`` overrides the budget's)."""
        run = self._start(inputs)
        with run.scope():
            while (end := run.before_step()) is None:
                try:
                    self.iteration(iteration_index=run.index, **run.inputs)
                except BudgetExceededError as err:
                    run.skip_extraction = True
                    end = (TerminationReason.BUDGET, scrub(str(err)))
                    break
                except ContextWindowExceededError:
                    end = (TerminationReason.ERROR, "the context window was exceeded even after truncation")
                    break
                if (end := run.after_step()) is not None:
                    break
            run.end = end
            outputs = self._extract(run)
        return self._prediction(run, outputs)

    async def aforward(self, **inputs: Any) -> dspy.Prediction:
        """Async :meth:`forward`: LM calls and tools are awaited; sync tools run in worker threads."""
        run = self._start(inputs)
        with run.scope():
            while (end := run.before_step()) is None:
                try:
                    await self.iteration.acall(iteration_index=run.index, **run.inputs)
                except BudgetExceededError as err:
                    run.skip_extraction = True
                    end = (TerminationReason.BUDGET, scrub(str(err)))
                    break
                except ContextWindowExceededError:
                    end = (TerminationReason.ERROR, "the context window was exceeded even after truncation")
                    break
                if (end := run.after_step()) is not None:
                    break
            run.end = end
            outputs = await self._aextract(run)
        return self._prediction(run, outputs)

    def _extract(self, run: _Run) -> dict[str, Any] | None:
        if not run.can_extract():
            return None
        with dspy.track_usage() as usage:
            try:
                with self.grammar_adapter():
                    pred = run.call_lm(
                        lambda t: self.extract(**run.inputs, trajectory=t), thoughts=self.extract_thoughts
                    )
            except (AdapterParseError, BudgetExceededError, ContextWindowExceededError) as err:
                self._extraction_failed(run, err)
                return None
            finally:
                run.add_tokens(usage)
        return {k: pred.get(k) for k in self.signature.output_fields}

    async def _aextract(self, run: _Run) -> dict[str, Any] | None:
        if not run.can_extract():
            return None
        with dspy.track_usage() as usage:
            try:
                with self.grammar_adapter():
                    pred = await run.acall_lm(
                        lambda t: self.extract.acall(**run.inputs, trajectory=t),
                        thoughts=self.extract_thoughts,
                    )
            except (AdapterParseError, BudgetExceededError, ContextWindowExceededError) as err:
                self._extraction_failed(run, err)
                return None
            finally:
                run.add_tokens(usage)
        return {k: pred.get(k) for k in self.signature.output_fields}

    @staticmethod
    def _extraction_failed(run: _Run, err: Exception) -> None:
        if isinstance(err, BudgetExceededError):
            run.end = (TerminationReason.BUDGET, f"{scrub(str(err))} while extracting the outputs")
        elif isinstance(err, ContextWindowExceededError):
            run.end = (
                TerminationReason.ERROR,
                "the context window was exceeded while extracting the outputs",
            )
        else:
            run.end = (TerminationReason.ERROR, "the model's final answer could not be parsed")

    def _prediction(self, run: _Run, outputs: dict[str, Any] | None) -> dspy.Prediction:
        extracted = outputs is not None
        values = outputs if outputs is not None else dict.fromkeys(self.signature.output_fields)
        return dspy.Prediction(
            **values,
            trajectory=dict(run.trajectory),
            steps=tuple(run.steps),
            termination=run.termination(extracted),
        )


def _allowed_tools(tools: list[GuardedTool], allow: Collection[str] | None) -> dict[str, GuardedTool]:
    by_name: dict[str, GuardedTool] = {}
    for tool in tools:
        name = tool.name or ""
        if name in by_name:
            raise ConfigError(f"two tools are named {name!r}", hint="pass name='...' to tell them apart")
        by_name[name] = tool
    if allow is None:
        return by_name
    unknown = sorted(set(allow) - by_name.keys())
    if unknown:
        raise ConfigError(f"allow names tools that were not given: {', '.join(unknown)}")
    return {name: tool for name, tool in by_name.items() if name in allow}
