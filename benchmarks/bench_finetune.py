"""Fine-tuning the embedded model: base vs LoRA-fine-tuned SmolLM2-135M on the helpdesk's held-out questions.

One process, one runtime (tracing off, DSPy's response cache off), the helpdesk's retrieve-then-answer
workflow (``geode.examples.helpdesk.build_rag``: top-2 passages, 400 characters each, answered through
``SmallModelAdapter`` on ``geode.LocalLM``):

1. **base**: the workflow on the shipped Q4_1 GGUF, scored on the 23 held-out questions;
2. **fine-tune**: :class:`geode.runtime.finetune.LocalFinetune` on the 48 *training* questions only: a
   quarter of them (seeded) is the validation split that picks the epoch (greedy replies scored with the
   helpdesk metric), the rest are trained on (their runs scored correct, plus, with ``--labels``, the wrong
   runs' answer step with the gold answer);
3. **fine-tuned**: the same workflow on the written-back GGUF, scored on the same held-out questions, once per
   quantisation of the changed tensors (``--qtypes``, default the base's Q4_1 and Q8_0);
4. **gate**: both versions go into a registry with their held-out scores; the best fine-tuned one is promoted
   only if it beats the base by ``--margin`` (``ProgramRegistry.promote``'s gate). A refusal is reported.

Prints a table and a JSON summary (training time, peak resident memory of the process, artifact size, load
average). Heavy: run under the shared CPU lock.

    flock /tmp/geode-cpu.lock .venv/bin/python benchmarks/bench_finetune.py
    flock /tmp/geode-cpu.lock .venv/bin/python benchmarks/bench_finetune.py --epochs 2 --budget 600 --labels
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import dspy

from geode.evals.evaluate import EvalResult, evaluate
from geode.examples import helpdesk
from geode.retrieval import Ingestor
from geode.runtime.finetune import FinetuneOptions, LMArtifactStore, LocalFinetune, Progress
from geode.runtime.finetune.gguf_io import write_gguf
from geode.runtime.lm import build_lm
from geode.runtime.lm.local import LocalLM
from geode.runtime.registry import ProgramRegistry, Score
from geode.runtime.runtime import Runtime
from geode.runtime.settings import LMSettings, Settings, TracingSettings


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def score(
    rt: Runtime, program: dspy.Module, data: Any, label: str, lm: dspy.BaseLM | None = None
) -> EvalResult:
    overrides = {"lm": lm} if lm is not None else {}
    with rt.batch(**overrides):
        result = evaluate(
            program, data, helpdesk.metric, program_name="helpdesk-rag", split="heldout", tags=(label,)
        )
    print(f"{label}: {result.score:.1%} of {result.n} held-out ({result.duration_s:.0f} s)", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--budget", type=float, default=900.0, help="training time budget, seconds")
    parser.add_argument("--labels", action="store_true", help="also train on wrong runs with the gold answer")
    parser.add_argument("--qtypes", default="Q4_1,Q8_0", help="quantisations of the changed tensors to score")
    parser.add_argument("--margin", type=float, default=0.05)
    parser.add_argument("--out", type=Path, default=None, help="write the JSON summary here")
    parser.add_argument(
        "--max-tokens", type=int, default=None, help="cap on each LM answer (default: settings')"
    )
    args = parser.parse_args()
    summary: dict[str, Any] = {"load_average_start": load_average(), "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory() as home:
        lm_settings = LMSettings(cache=False)
        if args.max_tokens:
            lm_settings = lm_settings.model_copy(update={"max_tokens": args.max_tokens})
        settings = Settings(home=Path(home), tracing=TracingSettings(enabled=False), lm=lm_settings)
        rt = Runtime(settings)
        try:
            Ingestor(rt.store, rt.embedder).ingest(helpdesk.corpus_paths(), helpdesk.COLLECTION)
            program = helpdesk.build_rag(rt.retriever(helpdesk.COLLECTION, k=2))
            train = helpdesk.questions_dataset(helpdesk.load_questions("train"), "helpdesk-train")
            heldout = helpdesk.questions_dataset(helpdesk.load_questions("heldout"), "helpdesk-heldout")
            base_lm = rt.lm
            assert isinstance(base_lm, LocalLM)
            summary["model"] = base_lm.model_path.name
            base = score(rt, program, heldout, "base")

            def progress(p: Progress) -> None:
                print(
                    f"  epoch {p.epoch} step {p.step}/{p.steps_total} loss {p.loss:.3f} "
                    f"elapsed {p.elapsed_s:.0f} s eta {p.eta_s:.0f} s",
                    flush=True,
                )

            options = FinetuneOptions(
                epochs=args.epochs,
                learning_rate=args.lr,
                rank=args.rank,
                alpha=2.0 * args.rank,
                time_budget_s=args.budget,
                qtype=None,
            )
            store = LMArtifactStore(Path(home) / "lms")
            finetune = LocalFinetune(
                helpdesk.metric,
                store=store,
                options=options,
                use_labels=args.labels,
                log=lambda m: print(m, flush=True),
                progress=progress,
            )
            t0 = time.perf_counter()
            with rt.batch():
                tuned = finetune.compile(program, trainset=train.examples())
            summary["finetune_wall_s"] = time.perf_counter() - t0
            report = finetune.report
            assert report is not None
            summary["report"] = report.to_dict()
            rows: list[tuple[str, EvalResult, int, str | None]] = [
                ("base (Q4_1)", base, base_lm.model_path.stat().st_size, None)
            ]
            if finetune.train_result is not None and finetune.train_result.changed:
                changed = {n: t.numpy() for n, t in finetune.train_result.changed.items()}
                for qtype in args.qtypes.split(","):
                    path = write_gguf(
                        base_lm.model_path, Path(home) / f"ft-{qtype}.gguf", changed, qtype=qtype
                    )
                    # The runtime's LM settings (max_tokens, context) on the new weights: only the weights differ.
                    lm = build_lm(settings.lm.model_copy(update={"model_path": path}))
                    stored = store.put(
                        path,
                        base_model=base_lm.model_path,
                        dataset_id=report.collected["dataset_id"],
                        method=options.method,
                        hyperparameters={**options.to_dict(), "qtype": qtype},
                        training=report.training,
                    )
                    result = score(rt, program, heldout, qtype, lm)
                    rows.append((f"fine-tuned ({qtype})", result, path.stat().st_size, stored.id))
            else:
                print("fine-tune did not beat the untrained model on validation: nothing to score")
            summary["results"] = [
                {
                    "side": side,
                    "score": r.score,
                    "correct": round(r.score * r.n),
                    "n": r.n,
                    "seconds": r.duration_s,
                    "bytes": size,
                    "artifact": artifact,
                }
                for side, r, size, artifact in rows
            ]
            # The gate: the registry's own promotion rule, base version vs the best fine-tuned one.
            registry = ProgramRegistry(Path(home) / "programs")
            base_v = registry.save("helpdesk-rag", program, scores=[Score.heldout(base)])
            if len(rows) > 1:
                side, best, _, artifact_id = max(rows[1:], key=lambda row: row[1].score)
                cand = registry.save(
                    "helpdesk-rag",
                    tuned,
                    parent=base_v.version,
                    scores=[Score.heldout(best)],
                    optimizer="finetune",
                    lm_artifact=artifact_id,
                )
                try:
                    registry.promote(
                        "helpdesk-rag",
                        cand.version,
                        candidate_score=best.score,
                        active_score=base.score,
                        margin=args.margin,
                    )
                    summary["gate"] = f"promoted {cand.version} ({side})"
                except Exception as err:  # the gate's refusal is a result, reported as such
                    summary["gate"] = f"refused: {err}"
            else:
                summary["gate"] = "no candidate (training did not improve on validation)"
        finally:
            rt.close()
    summary["load_average_end"] = load_average()
    print(json.dumps(summary, indent=2, default=str))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
