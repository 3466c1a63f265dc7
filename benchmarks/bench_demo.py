"""Wall time of `geode demo` with its defaults, stage by stage, against the 10-minute target.

Runs the real command in a fresh process on a fresh Geode home (so Phoenix starts from nothing and the whole
corpus is embedded), with Phoenix on a free port, then once more on the same home (the re-run: store and
Phoenix reused). Prints each run's wall time, the demo's own per-stage times, its summary rows and the load
average around it (the machine is shared; a loaded machine stretches every LM call).

    .venv/bin/python benchmarks/bench_demo.py                 # default sizes, first run and re-run
    .venv/bin/python benchmarks/bench_demo.py --quick --no-rerun
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from geode.demo.result import DEFAULT_HELD_OUT, DEFAULT_QUESTIONS, DEFAULT_VALIDATION, QUICK
from geode.runtime.phoenix import PhoenixServer, find_free_port
from geode.runtime.settings import PhoenixSettings

TARGET_S = 600.0


def run(home: Path, port: int, args: list[str]) -> tuple[float, dict[str, Any], tuple[float, float]]:
    env = {**os.environ, "GEODE_HOME": str(home), "GEODE_PHOENIX_PORT": str(port), "COLUMNS": "160"}
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "geode", "demo", *args], env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"geode demo failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    latest = json.loads((home / "demo" / "latest.json").read_text())
    return wall, latest, (load_before, os.getloadavg()[0])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="The sizes of `geode demo --quick`.")
    parser.add_argument("--questions", type=int)
    parser.add_argument("--held-out", type=int)
    parser.add_argument("--validation", type=int)
    parser.add_argument("--no-rerun", action="store_true")
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    opts = parser.parse_args()
    console = Console(width=200)
    opts.questions = opts.questions or (QUICK.questions if opts.quick else DEFAULT_QUESTIONS)
    opts.held_out = opts.held_out or (QUICK.held_out if opts.quick else DEFAULT_HELD_OUT)
    opts.validation = opts.validation or (QUICK.validation if opts.quick else DEFAULT_VALIDATION)
    args = ["--questions", str(opts.questions), "--held-out", str(opts.held_out)]
    args += ["--validation", str(opts.validation)]
    port = find_free_port()
    with tempfile.TemporaryDirectory(prefix="bench-demo-") as tmp:
        home = Path(tmp) / ".geode"
        runs: list[tuple[str, float, dict[str, Any], tuple[float, float]]] = []
        try:
            runs.append(("first run (fresh home)", *run(home, port, args)))
            if not opts.no_rerun:
                runs.append(("re-run (store, Phoenix reused)", *run(home, port, args)))
        finally:
            PhoenixServer(PhoenixSettings(port=port), working_dir=home / "phoenix").stop()

    table = Table(title=f"geode demo {' '.join(args)}")
    stages = list(dict.fromkeys(k for _, _, latest, _ in runs for k in latest["stage_seconds"]))
    for column in ["", "wall", "target", *stages, "load avg (before -> after)"]:
        table.add_column(column, justify="left" if column == "" else "right")
    for label, wall, latest, (before, after) in runs:
        cells = [f"{latest['stage_seconds'].get(s, 0):.0f} s" for s in stages]
        table.add_row(label, f"{wall:.0f} s", f"{TARGET_S:.0f} s", *cells, f"{before:.1f} -> {after:.1f}")
    console.print(table)
    for label, _, latest, _ in runs:
        rows = table_rows(latest)
        gate = latest["gate"]
        console.print(
            f"{label}: " + "; ".join(rows) + f"; gate: {gate['decision']} ({gate['reason']})", highlight=False
        )
    if opts.json:
        opts.json.write_text(json.dumps([{"label": r[0], "wall_s": r[1], **r[2]} for r in runs], indent=2))


def table_rows(latest: dict[str, Any]) -> list[str]:
    out = []
    for row in latest["programs"]:
        out.append(
            f"{row['name']} {row['correct']}/{row['n']}, {row['lm_calls_per_question']:.1f} LM calls, "
            f"{row['tokens_per_question']:,.0f} tokens, p50 {row['latency_p50_s']:.1f} s"
        )
    return out


if __name__ == "__main__":
    main()
