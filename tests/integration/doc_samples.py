"""Find and run the shell samples of the README and docs that are marked to run, as a reader would.

A fenced shell block runs when an HTML comment (invisible on the rendered page) comes right before it::

    <!-- doc-run home=qa lines=1,3 -->
    ```bash
    geode run geode.examples.qa:program --input question="What is the capital of France?"
    ```

- ``home=NAME``: blocks with the same home run in one folder, in reading order (:data:`PAGES`, then
  position), each with its own ``GEODE_HOME`` (``./.geode``, the default the docs' paths assume).
- ``lines=1,3-4``: only these command lines of the block (1-based; a ``\\`` continuation is one line).
  The others show placeholders (a trace id, ``myapp:agent``) or need what the suite does not have.
- ``slow``: the whole home is a slow test (``make test-slow``).
- ``tier=localmodel,embeddings``: the test tiers (tests/tiers.py) the block needs; the home skips, naming
  the tier, without them. A home with the ``phoenix`` tier traces to the suite's Phoenix, in a project of
  its own, and after each command that printed a new trace id waits until Phoenix shows that trace (it
  ingests asynchronously; a reader types the next command seconds later).
- ``nooutput``: the output shown after the block is not checked in this home (it prints otherwise
  there, e.g. a Phoenix link instead of a file path).

A block may carry several marks, one per home it runs in.

A fenced block right after ``<!-- doc-file NAME -->`` is a file the reader saves as ``NAME`` (a program, a
dataset): it is written into the folder before the page's next marked block runs.

A fenced block right after ``<!-- doc-output -->`` is what the last command run before it printed. Text is
compared line by line, in order, with every number, 32-hex-digit id and ``…`` standing for any value and
whitespace runs for any whitespace; JSON is compared as data: every key shown must be there, strings
equal (ids of 16+ hex digits only in form), numbers only in type.

Commands run in a subprocess each: ``geode``/``.venv/bin/geode`` as ``python -m geode`` on this checkout's
sources; ``python`` as this interpreter; ``geode serve`` in the background on a free port (waiting for ``/ready``), with the documented
port in later ``curl`` lines changed to it; ``curl`` as is, with a documented trace id changed to the
trace id of the newest answer (the server takes feedback only on runs it served); an answer that is the
server's error envelope fails the sample, since ``curl -s`` exits 0 on any HTTP status.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from geode.runtime.phoenix import find_free_port
from geode.traces.sources import PhoenixTraceSource

ROOT = Path(__file__).resolve().parents[2]
PAGES: tuple[str, ...] = (
    "README.md",
    "docs/quickstart.md",
    "docs/phoenix.md",
    "docs/tracing.md",
    "docs/learning-loop.md",
    "docs/serving.md",
    "docs/retrieval.md",
    "docs/agents.md",
    "docs/crystallize.md",
    "docs/demo.md",
)
"""Reading order: a home's blocks run in this page order (then by position on the page)."""

_RUN = re.compile(r"^<!--\s*doc-run\b(?P<options>[^>]*)-->\s*$")
_OUTPUT = re.compile(r"^<!--\s*doc-output\s*-->\s*$")
_FILE = re.compile(r"^<!--\s*doc-file\s+(?P<name>\S+)\s*-->\s*$")
_HEX_ID = re.compile(r"\b[0-9a-f]{32}\b")
_SERVE_PORT = 8000
"""The port ``geode serve`` listens on by default, as the docs' ``curl`` lines use it."""


@dataclass
class Sample:
    """One marked shell block and the output shown for it, if any."""

    page: str
    line: int
    home: str
    commands: list[str]
    slow: bool = False
    tiers: tuple[str, ...] = ()
    expected: str | None = None
    expected_lang: str = "text"
    files: dict[str, str] = field(default_factory=dict[str, str])
    """Files the page shows before this block (``<!-- doc-file NAME -->``), written into the folder first."""

    @property
    def where(self) -> str:
        """``page:line`` of the block, for messages."""
        return f"{self.page}:{self.line}"


def samples() -> list[Sample]:
    """Every marked block of :data:`PAGES` (and any other page under docs/), in reading order."""
    pages = [*PAGES, *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
    found: list[Sample] = []
    for page in dict.fromkeys(pages):
        found += _page_samples(page)
    return found


def homes() -> dict[str, list[Sample]]:
    """The marked blocks grouped by home, each group in reading order."""
    grouped: dict[str, list[Sample]] = {}
    for sample in samples():
        grouped.setdefault(sample.home, []).append(sample)
    return grouped


def _page_samples(page: str) -> list[Sample]:
    return parse_samples(page, (ROOT / page).read_text(encoding="utf-8"))


def parse_samples(page: str, markdown: str) -> list[Sample]:
    """The marked blocks of one page's ``markdown``, with the output shown for each.

    A block may carry several marks (it runs in several homes); the output shown after it is checked in
    each of them but those marked ``nooutput``.
    """
    lines = markdown.splitlines()
    found: list[Sample] = []
    last_block: list[tuple[Sample, bool]] = []
    marks: list[dict[str, str]] = []
    files: dict[str, str] = {}
    pending_output = False
    pending_file: str | None = None
    index = 0
    while index < len(lines):
        text = lines[index]
        if match := _RUN.match(text.strip()):
            marks.append(_options(match.group("options")))
        elif _OUTPUT.match(text.strip()):
            pending_output = True
        elif match := _FILE.match(text.strip()):
            pending_file = match.group("name")
        elif text.startswith("```"):
            lang = text[3:].strip() or "text"
            end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
            body = "\n".join(lines[index + 1 : end])
            if pending_file is not None:
                files[pending_file] = body + "\n"
            elif marks:
                commands = _command_lines(body)
                last_block = []
                for mark in marks:
                    sample = Sample(
                        page=page,
                        line=index + 1,
                        home=mark.get("home") or Path(page).stem,
                        commands=[commands[i] for i in _chosen(mark.get("lines"), len(commands))],
                        slow="slow" in mark,
                        tiers=tuple(t for t in mark.get("tier", "").split(",") if t),
                        files=dict(files),
                    )
                    found.append(sample)
                    last_block.append((sample, "nooutput" in mark))
            elif pending_output:
                if not last_block:
                    raise ValueError(f"{page}:{index + 1}: doc-output before any doc-run block")
                for sample, ignored in last_block:
                    if not ignored:
                        sample.expected, sample.expected_lang = body, lang
            marks, pending_output, pending_file = [], False, None
            index = end
        index += 1
    return found


def _options(text: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for word in text.split():
        key, _, value = word.partition("=")
        options[key] = value
    return options


def _command_lines(body: str) -> list[str]:
    return [line.strip() for line in body.replace("\\\n", " ").splitlines() if line.strip()]


def _chosen(spec: str | None, count: int) -> list[int]:
    if not spec:
        return list(range(count))
    chosen: list[int] = []
    for part in spec.split(","):
        first, _, last = part.partition("-")
        chosen += range(int(first) - 1, int(last or first))
    return chosen


# -- running --------------------------------------------------------------------------------------


@dataclass
class Ran:
    """What one command printed."""

    command: str
    returncode: int
    stdout: str
    stderr: str


@dataclass
class Walkthrough:
    """One home's folder, environment and servers, running its blocks' commands in turn."""

    folder: Path
    env: dict[str, str]
    servers: list[subprocess.Popen[bytes]] = field(default_factory=list[subprocess.Popen[bytes]])
    port: int | None = None
    last_trace_id: str | None = None
    timeout_s: float = 600.0
    phoenix: PhoenixTraceSource | None = None

    @classmethod
    def create(cls, folder: Path, phoenix_url: str | None = None) -> Walkthrough:
        """A walkthrough in ``folder`` (with ``benchmarks/`` and ``docs/`` of this checkout linked in).

        With ``phoenix_url`` its runs trace to that Phoenix, in a project named after the folder.
        """
        for name in ("benchmarks", "docs"):
            (folder / name).symlink_to(ROOT / name, target_is_directory=True)
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("GEODE_", "PHOENIX_"))}
        env = {
            **inherited,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
            "GEODE_HOME": str(folder / ".geode"),
            # Never a Phoenix that happens to run on this machine's default port: a home traces only
            # where its test points it.
            "GEODE_PHOENIX_PORT": str(find_free_port()),
        }
        if phoenix_url is None:
            return cls(folder, env)
        project = f"docs-{folder.name}"[:60]
        env |= {"GEODE_TRACING_ENDPOINT": phoenix_url, "GEODE_TRACING_PROJECT": project}
        return cls(folder, env, phoenix=PhoenixTraceSource(phoenix_url, project))

    def write_files(self, files: dict[str, str]) -> None:
        """Write the files a page showed (``<!-- doc-file NAME -->``) into the folder, as a reader saves them."""
        for name, text in files.items():
            path = self.folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")

    def run(self, command: str) -> Ran:
        """Run one documented command line (see the module docstring for how each kind runs)."""
        argv = shlex.split(command, comments=True)
        if argv[:1] == ["export"]:
            for assignment in argv[1:]:
                name, _, value = assignment.partition("=")
                self.env[name] = value
            return Ran(command, 0, "", "")
        if argv and argv[0].endswith("geode") and argv[0].split("/")[-1] == "geode":
            argv = [sys.executable, "-m", "geode", *argv[1:]]
            if argv[3:4] == ["serve"]:
                return self._serve(command, argv)
        elif argv[:1] == ["python"]:
            argv = [sys.executable, *argv[1:]]
        elif argv and argv[0] == "curl":
            argv = [self._localise(a) for a in argv]
        else:
            raise ValueError(f"doc-run cannot run {command!r}: only geode, python, curl and export lines")
        done = subprocess.run(
            argv, cwd=self.folder, env=self.env, capture_output=True, text=True, timeout=self.timeout_s
        )
        ran = Ran(command, done.returncode, done.stdout, done.stderr)
        if argv[0] == "curl" and ran.returncode == 0 and _is_error_body(ran.stdout):
            # `curl -s` exits 0 whatever the status; the server's error envelope says it failed.
            ran.returncode = 22
        before = self.last_trace_id
        self._remember_trace(ran.stdout + ran.stderr)
        if self.phoenix is not None and self.last_trace_id not in (None, before):
            arrived = self.phoenix.wait_for([str(self.last_trace_id)], timeout_s=120)
            if not arrived.complete:
                ran.stderr += f"\n(doc-run: Phoenix did not show trace {self.last_trace_id} within 120 s)"
                ran.returncode = ran.returncode or 1
        return ran

    def close(self) -> None:
        """Stop the servers this walkthrough started and close its Phoenix reader."""
        if self.phoenix is not None:
            self.phoenix.close()
        for server in self.servers:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()

    def _serve(self, command: str, argv: list[str]) -> Ran:
        self.port = find_free_port()
        if "--port" in argv:
            argv[argv.index("--port") + 1] = str(self.port)
        else:
            argv += ["--port", str(self.port)]
        log = (self.folder / f"serve-{len(self.servers)}.log").open("wb")
        server = subprocess.Popen(argv, cwd=self.folder, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.servers.append(server)
        log.close()  # the child holds its own descriptor
        deadline = time.monotonic() + self.timeout_s
        ready = False
        while not ready and time.monotonic() < deadline and server.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{self.port}/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                pass
            if not ready:
                time.sleep(0.25)
        printed = (self.folder / f"serve-{len(self.servers) - 1}.log").read_text(errors="replace")
        return Ran(command, 0 if ready else (server.poll() or 1), printed, "")

    def _localise(self, arg: str) -> str:
        if self.port is not None:
            for host in ("localhost", "127.0.0.1"):
                arg = arg.replace(f"{host}:{_SERVE_PORT}", f"127.0.0.1:{self.port}")
        if self.last_trace_id is not None:
            arg = _HEX_ID.sub(self.last_trace_id, arg)
        return arg

    def _remember_trace(self, printed: str) -> None:
        try:
            answer = json.loads(printed)
        except ValueError:
            answer = None
        if isinstance(answer, dict) and isinstance(answer.get("trace_id"), str):
            self.last_trace_id = str(answer["trace_id"])
            return
        if match := re.search(r"^trace ([0-9a-f]{32})\b", printed, re.MULTILINE):
            self.last_trace_id = match.group(1)


def _is_error_body(printed: str) -> bool:
    try:
        body = json.loads(printed)
    except ValueError:
        return False
    return isinstance(body, dict) and ("error" in body or "detail" in body)


# -- comparing ------------------------------------------------------------------------------------


def output_problems(expected: str, lang: str, actual: str) -> list[str]:
    """What the documented output shows that the actual output does not (empty: it matches)."""
    if lang == "json":
        try:
            got = json.loads(actual)
        except ValueError:
            return [f"the output is not JSON: {actual[:300]!r}"]
        return list(_json_problems(json.loads(expected), got, "$"))
    return _text_problems(expected, actual)


def _text_problems(expected: str, actual: str) -> list[str]:
    lines = actual.splitlines()
    at = 0
    for shown in expected.splitlines():
        if not shown.strip() or shown.strip() == "…":
            continue
        pattern = _line_pattern(shown)
        hit = next((i for i in range(at, len(lines)) if pattern.search(lines[i])), None)
        if hit is None:
            return [f"no line like {shown.strip()!r} (after line {at}) in:\n{actual}"]
        at = hit + 1
    return []


def _line_pattern(shown: str) -> re.Pattern[str]:
    out: list[str] = []
    for token in re.split(r"(…|[0-9a-f]{32}|\d+(?:[.,]\d+)*|\s+)", shown.strip()):
        if not token:
            continue
        if token == "…":
            out.append(".*")
        elif _HEX_ID.fullmatch(token):
            out.append("[0-9a-f]{32}")
        elif token[0].isdigit():
            out.append(r"\d+(?:[.,]\d+)*")
        elif token.isspace():
            out.append(r"\s+")
        else:
            out.append(re.escape(token))
    return re.compile("".join(out))


def _json_problems(shown: Any, got: Any, path: str) -> Iterator[str]:
    if isinstance(shown, dict):
        if not isinstance(got, dict):
            yield f"{path}: expected an object, got {got!r}"
            return
        for key, value in shown.items():
            if key not in got:
                yield f"{path}.{key}: missing (got keys {sorted(got)})"
            else:
                yield from _json_problems(value, got[key], f"{path}.{key}")
    elif isinstance(shown, list):
        if not isinstance(got, list) or len(got) != len(shown):
            yield f"{path}: expected a list of {len(shown)}, got {got!r}"
            return
        for i, (a, b) in enumerate(zip(shown, got, strict=True)):
            yield from _json_problems(a, b, f"{path}[{i}]")
    elif isinstance(shown, bool) or shown is None:
        if got is not shown:
            yield f"{path}: expected {shown!r}, got {got!r}"
    elif isinstance(shown, int | float):
        if isinstance(got, bool) or not isinstance(got, int | float):
            yield f"{path}: expected a number, got {got!r}"
    elif isinstance(shown, str) and re.fullmatch(r"[0-9a-f]{16,}", shown):
        if not (isinstance(got, str) and re.fullmatch(r"[0-9a-f]{16,}", got)):
            yield f"{path}: expected an id, got {got!r}"
    elif shown != got:
        yield f"{path}: expected {shown!r}, got {got!r}"
