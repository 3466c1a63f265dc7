"""The crystallization report: which pattern(s) the workflow took and why, written from the spec alone.

Everything shown comes from the spec's ``source`` section (the patterns found, their shares, success
rates and argument derivations, and the decision) and its routes, so the report of any spec file can be
regenerated without the runs.

Constants and patterns in a spec come from the arguments a model chose in recorded runs, so the report
treats every such value as text, not Markdown: a Markdown image in a constant would otherwise make the
reader's viewer fetch its URL (exfiltration), and raw HTML would render.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Final

from geode.agents.crystallize.spec import Binding, OutputStep, PredictStep, RouteSpec, ToolStep, WorkflowSpec

__all__ = ["describe_binding", "learned_from_text", "pattern_rows", "render_report", "route_lm_calls"]

# The characters that make Markdown inline text a link, an image, HTML, code or a table cell boundary
# (emphasis is left alone: it changes no meaning, and escaping every `_` would garble tool names).
_MARKDOWN_ACTIVE: Final = re.compile(r"([\\`\[\]<>|])")


def _md(text: str) -> str:
    """``text`` as literal Markdown inline text: one line; links, images, HTML and code escaped."""
    return _MARKDOWN_ACTIVE.sub(r"\\\1", " ".join(str(text).split()))


def _code(text: str) -> str:
    """``text`` as a Markdown code span, whatever backticks it holds."""
    body = " ".join(str(text).split())
    fence = "`" * (max((len(run) for run in re.findall(r"`+", body)), default=0) + 1)
    pad = " " if body.startswith("`") or body.endswith("`") else ""
    return f"{fence}{pad}{body}{pad}{fence}"


def route_lm_calls(spec: WorkflowSpec, route: RouteSpec) -> int:
    """LM calls one input costs on this route (router included), when nothing falls back."""
    own = sum(1 for step in route.steps if isinstance(step, PredictStep))
    return own + (1 if spec.router is not None else 0)


def describe_binding(binding: Binding) -> str:
    r"""A binding as a short expression, e.g. ``router.lookup_stock_item`` or ``/(\d+)/ in call_x``."""
    if binding.source == "input":
        suffix = f" ({binding.transform})" if binding.transform else ""
        return f"input {binding.field}{suffix}"
    if binding.source == "constant":
        return json.dumps(binding.value, ensure_ascii=False)
    if binding.pattern is not None:
        every = "every match of " if binding.all_matches else ""
        return f"{every}/{binding.pattern}/ in {binding.step}"
    return f"{binding.step}.{binding.field}"


def _route_lines(spec: WorkflowSpec, route: RouteSpec) -> Iterator[str]:
    number = 1
    if spec.router is not None:
        fields = [f.name for f in spec.router.outputs if f.name != "route"]
        extra = f", and {', '.join(fields)}" if fields else ""
        yield f"{number}. `router` (LM): chooses `route = {route.label}`{extra}"
        number += 1
    for step in route.steps:
        if isinstance(step, PredictStep):
            reads = ", ".join(f.name for f in step.inputs)
            makes = ", ".join(f"{f.name}: {f.type}" for f in step.outputs)
            yield f"{number}. `{step.id}` (LM, {len(step.demos)} demos): {reads} → {makes}"
        elif isinstance(step, ToolStep):
            args = ", ".join(f"{k}={describe_binding(b)}" for k, b in step.args.items())
            each = f" once per value (at most {step.max_calls})" if step.repeat else ""
            yield f"{number}. `{step.id}`: {step.tool}({_md(args)}){each}"
        elif isinstance(step, OutputStep):
            outs = ", ".join(f"{k} = {describe_binding(b)}" for k, b in step.outputs.items())
            yield f"{number}. output: {_md(outs)}"
        number += 1


def pattern_rows(spec: WorkflowSpec) -> tuple[tuple[str, ...], list[list[str]]]:
    """Headers and rows of the patterns table (one row per pattern found)."""
    headers = (
        "pattern",
        "runs",
        "share",
        "success rate",
        "retried",
        "agent LM calls",
        "workflow LM calls",
        "chosen",
    )
    routes = {r.label: r for r in spec.routes}
    rows = []
    for p in spec.source.patterns:
        route = routes.get(p.label)
        rows.append(
            [
                p.label,
                f"{p.runs}/{p.attempts}",
                f"{p.share:.0%}",
                f"{p.success_rate:.0%}",
                str(p.retried),
                f"{p.lm_calls:.1f}",
                str(route_lm_calls(spec, route)) if route is not None else "-",
                "yes" if p.chosen else "",
            ]
        )
    return headers, rows


_KINDS = (
    ("feedback", "scored correct by feedback"),
    ("metric", "scored correct by the metric on labelled data"),
    ("eval", "scored correct in an evaluation"),
    ("unscored", "unscored but trusted (--trust-unscored)"),
)


def learned_from_text(learned_from: Mapping[str, int]) -> str:
    """How many successful runs of each kind the workflow learned from, as one phrase.

    Example:
        >>> learned_from_text({"feedback": 3, "unscored": 1})
        '3 runs scored correct by feedback, 1 run unscored but trusted (--trust-unscored)'
    """
    parts = [
        f"{n} run{'s' if n != 1 else ''} {text}" for kind, text in _KINDS if (n := learned_from.get(kind, 0))
    ]
    return ", ".join(parts) or "no runs"


def render_report(spec: WorkflowSpec) -> str:
    """The report as Markdown."""
    source = spec.source
    failures = ", ".join(f"{n} {why}" for why, n in sorted(source.failures.items())) or "none"
    rule = (
        f"completed, and scored at least {source.success_threshold:g} where scored (unscored runs trusted)"
        if source.unscored_ok
        else f"completed and scored at least {source.success_threshold:g}; an unscored run is unknown"
    )
    lines = [
        f"# Crystallization: {_md(spec.name)}",
        "",
        f"Read {source.runs} runs"
        + (f" of {_code(source.program)}" if source.program else "")
        + f" from {_md(source.description)}: {source.successful} succeeded"
        + f" (success: {rule}); "
        + f"not learned from: {failures}.",
        "",
        f"**Learned from:** {learned_from_text(source.learned_from)}.",
        "",
        f"**Decision:** {_md(source.decision)}.",
        "",
        "## Patterns",
        "",
        "Runs are grouped by their tool sequence, failed calls dropped and repeats collapsed. "
        "Share is of the successful runs; success rate is over every run that followed the pattern.",
        "",
    ]
    headers, rows = pattern_rows(spec)
    lines.append("| " + " | ".join(headers) + " |")
    lines.append("|" + "|".join("---" for _ in headers) + "|")
    lines.extend("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows)
    for summary in source.patterns:
        if not summary.chosen:
            continue
        route = spec.route(summary.label)
        lines += [
            "",
            f"## Route `{route.label}`",
            "",
            "How each argument and output is derived in the recorded runs:",
            "",
        ]
        lines += [f"- {_md(key)}: {_md(how)}" for key, how in summary.derivations.items()] or [
            "- (no arguments)"
        ]
        lines += ["", f"Steps ({route_lm_calls(spec, route)} LM call(s) per input):", ""]
        lines += list(_route_lines(spec, route))
    lines += [
        "",
        "## Guard",
        "",
        f"Inputs the workflow cannot handle go to the agent {_code(spec.agent_ref or '(given at load time)')}: "
        + ", ".join(
            reason
            for reason, on in (
                ("a failing step", spec.guard.on_error),
                ("the router answering 'other'", spec.guard.on_other and spec.router is not None),
                ("an empty output", spec.guard.require_outputs),
            )
            if on
        )
        + ".",
        "",
        f"Spec {spec.content_hash or spec.compute_hash()}, created {source.created_at}.",
    ]
    return "\n".join(lines) + "\n"
