"""Fine-tuning the embedded model: base vs LoRA-fine-tuned SmolLM2-135M on the helpdesk's held-out questions.

One process, one runtime (tracing off, DSPy's response cache off), the helpdesk's retrieve-then-answer
workflow (``geode.examples.helpdesk.build_rag``: top-2 passages, 400 characters each, answered through
``SmallModelAdapter`` on ``geode.LocalLM``). The 48 training questions are split once (seeded): a quarter
is the **validation** split, which picks the epoch and decides the gate; the rest are trained on. The 23
**held-out** questions only measure: nothing is chosen on them.

1. **base**: the workflow on the shipped Q4_1 GGUF, scored on the held-out questions;
2. **fine-tune**: :class:`geode.runtime.finetune.LocalFinetune` on the training part (the runs scored
   correct; ``--labels`` adds the wrong runs' answer step with the gold answer). Each epoch is judged as
   it would be served (``val_judge="served"``): written as GGUF (``--qtype``), loaded by llama.cpp, and the
   workflow run on the validation questions. The best *trained* epoch is always written (a candidate),
   even when it did not beat the untrained model, so that a losing fine-tune is measured, not hidden;
3. **fine-tuned**: the workflow on the candidate GGUF, scored on the same held-out questions;
4. **prompt-level** (``--prompt-level``): the demo's terse answer instruction on the base weights, scored
   on validation and held-out, for comparison (cheap: no training);
5. **gate**: the demo's own gate (``geode.demo.pipeline``: both versions scored on the validation split
   through ``evaluate``, promoted only if the candidate beats the base by 5 points). Its decision, a
   refusal included, is reported.

Prints progress and a JSON summary (timings, peak resident memory of the process, artifact size and
type, load average at start and end). Heavy: run under the shared CPU lock.

    flock /tmp/geode-cpu.lock .venv/bin/python benchmarks/bench_finetune.py --out /tmp/ft.json
    flock /tmp/geode-cpu.lock .venv/bin/python benchmarks/bench_finetune.py --quick --epochs 1  # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import dspy

from geode.demo.gate import gate as demo_gate  # the demo's own gate, as is
from geode.demo.recompile import TERSE, variant_candidate
from geode.evals.dataset import Dataset
from geode.evals.evaluate import EvalResult, evaluate
from geode.examples import helpdesk
from geode.retrieval import Ingestor
from geode.runtime.finetune import FinetuneOptions, LMArtifactStore, LocalFinetune, Progress
from geode.runtime.finetune.gguf_io import read_info
from geode.runtime.lm import build_lm
from geode.runtime.lm.local import LocalLM
from geode.runtime.registry import ProgramRegistry, Score
from geode.runtime.runtime import Runtime
from geode.runtime.settings import LMSettings, Settings, TracingSettings

PROGRAM = "helpdesk-rag"


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def score(rt: Runtime, program: dspy.Module, data: Dataset, label: str, split: str) -> EvalResult:
    with rt.batch():
        result = evaluate(program, data, helpdesk.metric, program_name=PROGRAM, split=split, tags=(label,))
    print(
        f"{label}, {split}: {round(result.score * result.n)}/{result.n} ({result.duration_s:.0f} s) "
        f"[load {load_average()}]",
        flush=True,
    )
    return result


def row(result: EvalResult) -> dict[str, Any]:
    return {
        "correct": round(result.score * result.n),
        "n": result.n,
        "score": round(result.score, 4),
        "seconds": round(result.duration_s, 1),
        "errors": result.errors,
        # Which questions: a one-question difference is a gain, or several gains and losses.
        "correct_ids": sorted(e.example_id for e in result.examples if e.score >= 1.0),
    }


def validation_score(result: EvalResult) -> Score:
    # The gate's split, recorded under its own name beside the held-out score (as the demo does).
    return Score(
        dataset_id=result.dataset_id, metric=result.metric, score=result.score, n=result.n, split="validation"
    )


def update_kept(base: Path, trained: dict[str, Any]) -> dict[str, Any]:
    """How much of the trained update survives each GGUF type, on the real update.

    Over the v/o/gate/up/down projections (their rows are in the same order in both files; q/k are
    permuted): the update is ``trained - dequantised base``; each type requantises ``base + update``, and
    ``kept`` is the update's share that comes back (projection of what changed onto the update).
    """
    import gguf
    import numpy as np

    from geode.runtime.finetune.gguf_io import gguf_name

    tensors = {t.name: t for t in gguf.GGUFReader(str(base)).tensors}
    dot = {q: 0.0 for q in ("Q4_1", "Q5_1", "Q8_0")}
    norm2, count, size = 0.0, 0, 0
    for name, weight in trained.items():
        gname = gguf_name(name)
        if gname is None or gname.split(".")[-2] in ("attn_q", "attn_k") or gname not in tensors:
            continue
        tensor = tensors[gname]
        w0 = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        update = weight.detach().cpu().numpy().astype(np.float32) - w0
        norm2 += float((update * update).sum())
        count, size = count + 1, size + update.size
        for qtype in dot:
            kind = gguf.GGMLQuantizationType[qtype]
            back = gguf.quants.dequantize(gguf.quants.quantize(w0 + update, kind), kind)
            dot[qtype] += float(((back - w0) * update).sum())
    if not count:
        return {}
    return {
        "tensors": count,
        "update_rms": (norm2 / size) ** 0.5,
        "kept": {q: round(v / norm2, 3) for q, v in dot.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--budget", type=float, default=900.0, help="hard training time budget, seconds")
    parser.add_argument("--labels", action="store_true", help="also train on wrong runs with the gold answer")
    parser.add_argument("--qtype", default="Q8_0", help="GGUF type of the changed tensors (default Q8_0)")
    parser.add_argument("--judge", choices=("served", "torch"), default="served", help="validation judge")
    parser.add_argument(
        "--prompt-level", action="store_true", help="also score the terse-instruction variant"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the training/validation split")
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: 8 training, 4 validation, 4 held-out questions"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the JSON summary here")
    args = parser.parse_args()
    summary: dict[str, Any] = {
        "load_average_start": load_average(),
        "started_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "cores": os.cpu_count(),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as home:
        settings = Settings(
            home=Path(home), tracing=TracingSettings(enabled=False), lm=LMSettings(cache=False)
        )
        rt = Runtime(settings)
        try:
            Ingestor(rt.store, rt.embedder).ingest(helpdesk.corpus_paths(), helpdesk.COLLECTION)
            program = helpdesk.build_rag(rt.retriever(helpdesk.COLLECTION, k=2))
            questions = helpdesk.load_questions("train")
            random.Random(args.seed).shuffle(questions)
            n_val = round(len(questions) / 4)
            fit_q, val_q = questions[n_val:], questions[:n_val]
            heldout_q = helpdesk.load_questions("heldout")
            if args.quick:
                fit_q, val_q, heldout_q = fit_q[:8], val_q[:4], heldout_q[:4]
            fit = helpdesk.questions_dataset(fit_q, "helpdesk-train-fit")
            val = helpdesk.questions_dataset(val_q, "helpdesk-train-validation")
            heldout = helpdesk.questions_dataset(heldout_q, "helpdesk-heldout")
            summary["splits"] = {"train": len(fit), "validation": len(val), "heldout": len(heldout)}
            base_lm = rt.lm
            assert isinstance(base_lm, LocalLM)
            base_info = read_info(base_lm.model_path)
            summary["model"] = {
                "file": base_lm.model_path.name,
                "bytes": base_lm.model_path.stat().st_size,
                "projection_type": base_info.tensor_types.get("blk.0.attn_q.weight"),
            }
            base_heldout = score(rt, program, heldout, "base", "heldout")

            def progress(p: Progress) -> None:
                print(
                    f"  epoch {p.epoch} step {p.step}/{p.steps_total} loss {p.loss:.3f} "
                    f"elapsed {p.elapsed_s:.0f} s eta {p.eta_s:.0f} s [load {load_average()}]",
                    flush=True,
                )

            options = FinetuneOptions(
                epochs=args.epochs,
                learning_rate=args.lr,
                rank=args.rank,
                alpha=2.0 * args.rank,
                time_budget_s=args.budget,
                qtype=args.qtype,
                val_judge=args.judge,
            )
            store = LMArtifactStore(settings.lm_artifacts_dir)
            finetune = LocalFinetune(
                helpdesk.metric,
                store=store,
                options=options,
                use_labels=args.labels,
                keep_candidate=True,
                # The runtime's LM settings (max_tokens, context) on the new weights: only the weights differ.
                lm_factory=lambda path: build_lm(settings.lm.model_copy(update={"model_path": path})),
                log=lambda m: print(m, flush=True),
                progress=progress,
            )
            t0 = time.perf_counter()
            with rt.batch():
                finetune.compile(program, trainset=fit.examples(), valset=val.examples())
            summary["finetune_wall_s"] = round(time.perf_counter() - t0, 1)
            report = finetune.report
            assert report is not None
            summary["finetune"] = report.to_dict()
            summary["proposed"] = report.artifact is not None
            trained = finetune.train_result.candidate if finetune.train_result else {}
            if trained:
                summary["update_kept"] = update_kept(base_lm.model_path, trained)
                print(f"update kept per type: {summary['update_kept']}", flush=True)
            results: dict[str, Any] = {"base": {"heldout": row(base_heldout)}}
            registry = ProgramRegistry(Path(home) / "programs")
            base_val = score(rt, program, val, "base", "validation")
            results["base"]["validation"] = row(base_val)
            base_v = registry.save(
                PROGRAM, program, scores=[Score.heldout(base_heldout), validation_score(base_val)]
            )
            candidate = finetune.candidate
            if candidate is None:
                print("no candidate: no training step ran within the budget", flush=True)
                summary["gate"] = {"decision": "none", "reason": "no epoch was trained: no candidate"}
            else:
                assert candidate.path is not None
                tuned = finetune.bind(program, candidate)
                summary["artifact"] = {
                    "id": candidate.id,
                    "bytes": candidate.bytes,
                    "changed_tensor_type": read_info(candidate.path).tensor_types.get("blk.0.attn_q.weight"),
                    "epoch": report.training.get("candidate_epoch"),
                }
                cand_heldout = score(rt, tuned, heldout, f"fine-tuned ({args.qtype})", "heldout")
                cand_val = score(rt, tuned, val, f"fine-tuned ({args.qtype})", "validation")
                results["fine-tuned"] = {"heldout": row(cand_heldout), "validation": row(cand_val)}
                cand_v = registry.save(
                    PROGRAM,
                    tuned,
                    parent=base_v.version,
                    scores=[Score.heldout(cand_heldout), validation_score(cand_val)],
                    optimizer="finetune",
                    lm_artifact=candidate.id,
                )
                gate = demo_gate(
                    registry, PROGRAM, cand_v.version, base_v.version, program, cand_val, base_val
                )
                summary["gate"] = gate.summary()
                print(f"gate: {gate.reason}", flush=True)
            if args.prompt_level:
                terse = variant_candidate(instructions=("terse", TERSE)).build(program, fit)
                results["prompt-level (terse instruction)"] = {
                    "validation": row(score(rt, terse, val, "terse instruction", "validation")),
                    "heldout": row(score(rt, terse, heldout, "terse instruction", "heldout")),
                }
            summary["results"] = results
        finally:
            rt.close()
    # ru_maxrss is in kilobytes on Linux: the process's peak resident memory (torch, llama.cpp, embedder).
    summary["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)
    summary["wall_s"] = round(time.perf_counter() - t_start, 1)
    summary["load_average_end"] = load_average()
    text = json.dumps(summary, indent=2, default=str)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
