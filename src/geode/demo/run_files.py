"""Where a demo run lives: its folder, the marker of an incomplete run, and the run's settings.

A run works in ``<home>/demo/runs/<id>/`` with an :data:`INCOMPLETE` marker in it until it completes;
the next run deletes marked folders (and temporary report folders), so an interrupted run never leaves a
half-written file that a later step reads.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from geode.demo.result import workflow_program
from geode.examples import helpdesk
from geode.retrieval import Store
from geode.runtime.registry import ProgramRegistry, _atomic_write
from geode.runtime.settings import LMSettings, Settings, TracingSettings

__all__ = [
    "INCOMPLETE",
    "LOCAL_MAX_TOKENS",
    "PROJECT",
    "atomic_write_text",
    "clean_incomplete",
    "demo_dir",
    "demo_settings",
    "open_run",
    "runs_dir",
    "start_over",
]

INCOMPLETE = "INCOMPLETE"
"""The marker file in a run folder that has not completed (the next run deletes such folders)."""
LOCAL_MAX_TOKENS = 128
"""Cap on tokens per call of the embedded model: a looping answer costs seconds per ten tokens."""
PROJECT = "geode-demo"
"""The Phoenix project the demo's traces land in."""


# -- files ----------------------------------------------------------------------------------------


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename (readers never see half of it)."""
    # The registry's writer: temporary file in the same folder, fsync, os.replace.
    _atomic_write(path, text)
    return path


def demo_dir(settings: Settings) -> Path:
    """``<home>/demo``: the demo's runs, its published workflow spec and ``latest.json``."""
    return settings.home / "demo"


def runs_dir(settings: Settings) -> Path:
    """``<home>/demo/runs``: one folder per run."""
    return demo_dir(settings) / "runs"


def clean_incomplete(settings: Settings) -> list[Path]:
    """Delete what interrupted runs left behind (marked run folders and temporary reports)."""
    removed: list[Path] = []
    runs = runs_dir(settings)
    if runs.is_dir():
        for path in runs.iterdir():
            # `*.partial`: the folders of runs interrupted before the marker replaced the suffix.
            if path.is_dir() and ((path / INCOMPLETE).exists() or path.suffix == ".partial"):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    if settings.reports_dir.is_dir():
        for path in settings.reports_dir.glob(".demo-*.tmp"):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def start_over(settings: Settings, store: Store, registry: ProgramRegistry) -> None:
    """``--fresh``: drop the demo's collection, runs and workflow versions."""
    if helpdesk.COLLECTION in store.list_collections():
        store.delete_collection(helpdesk.COLLECTION)
    shutil.rmtree(demo_dir(settings), ignore_errors=True)
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


def open_run(run_dir: Path) -> None:
    """Create the run's folder with its :data:`INCOMPLETE` marker."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / INCOMPLETE).write_text("this run has not completed; the next `geode demo` deletes it\n")
