"""The training loop: LoRA (or full) fine-tuning on CPU with a validation split, early stopping and a time budget.

Loss is on the reply tokens only (the prompt is context, not something to learn). After every epoch the
model is scored on the validation examples (a score such as the metric on greedy replies, ties broken
by the validation loss); the best epoch's weights are kept and training stops when ``patience`` epochs
in a row did not improve, when the epochs run out, or before a step would overrun the time budget.
Epoch 0 is the untrained model: when no epoch beats it, the result says so and the changed weights are
empty. An epoch that only lowers the loss at an equal score is kept, so the held-out comparison and
the promotion gate, not this loop, decide whether the fine-tune is better than the base. The best
*trained* epoch's weights are returned either way (``candidate``), so a fine-tune that lost can still be
measured and refused in the open rather than left unwritten.
"""

from __future__ import annotations

import logging
import math
import random
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from geode.runtime.finetune.data import ChatExample
from geode.runtime.finetune.gguf_io import WRITABLE_TYPES
from geode.runtime.finetune.lora import DEFAULT_TARGETS, add_lora, lora_parameters, merge_lora, merged_weights

__all__ = [
    "EpochRecord",
    "FinetuneOptions",
    "Progress",
    "Tokenized",
    "TrainResult",
    "current_weights",
    "encode",
    "generate_reply",
    "train",
]

logger = logging.getLogger(__name__)

Method = Literal["lora", "full"]
ValJudge = Literal["torch", "served"]
_IGNORE = -100


@dataclass(frozen=True)
class FinetuneOptions:
    """How to fine-tune (recorded as the LM artifact's hyper-parameters)."""

    method: Method = "lora"
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    targets: tuple[str, ...] = DEFAULT_TARGETS
    learning_rate: float = 2e-4
    """2e-4 suits LoRA; a full fine-tune wants about 1e-5."""
    weight_decay: float = 0.0
    epochs: int = 3
    batch_size: int = 4
    max_length: int = 768
    """Longer examples lose prompt tokens from the left (the reply is always kept)."""
    val_fraction: float = 0.25
    """Share of the training examples held out for early stopping when no validation set is given."""
    patience: int = 1
    """Epochs without improvement before stopping."""
    time_budget_s: float = 1200.0
    """Hard limit on training time (loading and writing the model not included)."""
    seed: int = 0
    qtype: str | None = "auto"
    """Quantisation of the changed tensors in the GGUF: ``auto``, the base tensors' type unless it is
    coarser than Q8_0 (a 4-bit type rounds a LoRA update away), then Q8_0; ``None``, the base tensors'
    type; or a type name (``Q8_0``, ``F16``...)."""
    threads: int | None = None
    """torch CPU threads; default: torch's own choice."""
    val_judge: ValJudge = "served"
    """How validation replies are produced: ``served``, the epoch written as GGUF (``qtype``) and the
    whole program run on it through the LM factory (llama.cpp for the embedded model), i.e. what a
    promoted version would serve, quantisation included, and far faster on a CPU; ``torch``, greedy from
    the float32 model being trained (the weights before quantisation; no LM needed)."""

    def __post_init__(self) -> None:
        if self.method not in ("lora", "full"):
            raise ValueError(f"method must be 'lora' or 'full', got {self.method!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.max_length < 16:
            raise ValueError("epochs and batch_size must be at least 1, max_length at least 16")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be between 0 and 1, got {self.val_fraction}")
        if self.time_budget_s <= 0:
            raise ValueError(f"time_budget_s must be positive, got {self.time_budget_s}")
        if self.qtype is not None and self.qtype != "auto" and self.qtype not in WRITABLE_TYPES:
            raise ValueError(
                f"qtype must be 'auto', None or one of {', '.join(WRITABLE_TYPES)}, got {self.qtype!r}"
            )
        if self.val_judge not in ("torch", "served"):
            raise ValueError(f"val_judge must be 'torch' or 'served', got {self.val_judge!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data."""
        return {**self.__dict__, "targets": list(self.targets)}


@dataclass(frozen=True)
class Tokenized:
    """One example as token ids, with the labels masked outside the reply."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]


@dataclass(frozen=True)
class Progress:
    """Where training is (sent to the progress callback after each step)."""

    epoch: int
    step: int
    steps_total: int
    loss: float
    elapsed_s: float
    eta_s: float


@dataclass(frozen=True)
class EpochRecord:
    """One epoch's figures (epoch 0: the untrained model)."""

    epoch: int
    train_loss: float | None
    val_loss: float
    val_score: float | None
    seconds: float
    val_seconds: float = 0.0
    """Of ``seconds``, the time spent judging validation (loss and score)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data."""
        return dict(self.__dict__)


@dataclass
class TrainResult:
    """What training produced."""

    changed: dict[str, torch.Tensor]
    """The weights that differ from the base model, by parameter name (empty: the base model is best)."""
    candidate: dict[str, torch.Tensor]
    """The best *trained* epoch's weights, whether or not it beat the untrained model (empty: no epoch
    trained, e.g. the time budget cut the first step). Equal to ``changed`` when ``improved``."""
    candidate_epoch: int
    """The epoch ``candidate`` comes from (0: none)."""
    history: list[EpochRecord]
    best_epoch: int
    stopped: str
    """``epochs``, ``early_stop`` or ``time_budget``."""
    seconds: float
    peak_rss_mb: float
    n_train: int
    n_val: int
    trainable_parameters: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def improved(self) -> bool:
        """Whether some trained epoch beat the untrained model on validation."""
        return self.best_epoch > 0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (without the weights)."""
        return {
            "history": [h.to_dict() for h in self.history],
            "best_epoch": self.best_epoch,
            "candidate_epoch": self.candidate_epoch,
            "improved": self.improved,
            "stopped": self.stopped,
            "seconds": self.seconds,
            "peak_rss_mb": self.peak_rss_mb,
            "n_train": self.n_train,
            "n_val": self.n_val,
            "trainable_parameters": self.trainable_parameters,
            **self.extra,
        }


def encode(tokenizer: Any, example: ChatExample, max_length: int) -> Tokenized:
    r"""Tokenize a chat example with the tokenizer's chat template; labels only on the reply.

    The prompt is rendered with the generation prompt (``<|im_start|>assistant\n``), the reply follows
    with the template's end-of-turn, exactly as llama.cpp renders the same messages at inference.
    """
    messages = [dict(m) for m in example.messages]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": example.completion}], tokenize=False
    )
    if not full.startswith(prompt):  # a template that renders the last turn differently: append the reply
        full = prompt + example.completion + (tokenizer.eos_token or "")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    reply = len(full_ids) - len(prompt_ids)
    if reply <= 0:
        raise ValueError(f"example from {example.source} has an empty reply")
    if len(full_ids) > max_length:
        # Keep the reply whole; drop the oldest prompt tokens.
        full_ids = full_ids[len(full_ids) - max_length :]
        reply = min(reply, max_length - 1)
    labels = [_IGNORE] * (len(full_ids) - reply) + full_ids[len(full_ids) - reply :]
    return Tokenized(tuple(full_ids), tuple(labels))


def _batch(items: Sequence[Tokenized], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(t.input_ids) for t in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), _IGNORE, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, item in enumerate(items):
        n = len(item.input_ids)
        ids[row, :n] = torch.tensor(item.input_ids)
        labels[row, :n] = torch.tensor(item.labels)
        mask[row, :n] = 1
    return ids, labels, mask


def _loss(model: Any, items: Sequence[Tokenized], pad_id: int) -> torch.Tensor:
    ids, labels, mask = _batch(items, pad_id)
    return model(input_ids=ids, attention_mask=mask, labels=labels).loss


@torch.no_grad()
def _val_loss(model: Any, items: Sequence[Tokenized], pad_id: int, batch_size: int) -> float:
    model.eval()
    total, weight = 0.0, 0
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        tokens = sum(sum(1 for x in t.labels if x != _IGNORE) for t in chunk)
        total += float(_loss(model, chunk, pad_id)) * tokens
        weight += tokens
    return total / max(weight, 1)


@torch.no_grad()
def generate_reply(
    model: Any, tokenizer: Any, messages: Sequence[dict[str, str]], max_new_tokens: int = 32
) -> str:
    """Greedy reply of the torch model to chat messages (used to score validation examples)."""
    model.eval()
    prompt = tokenizer.apply_chat_template(
        [dict(m) for m in messages], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    stop = [
        i
        for i in {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
        if isinstance(i, int)
    ]
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=stop or None,
        pad_token_id=stop[0] if stop else None,
    )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def _peak_rss_mb() -> float:
    # ru_maxrss is in kilobytes on Linux: the process's peak resident memory so far.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def train(
    model: Any,
    train_items: Sequence[Tokenized],
    val_items: Sequence[Tokenized],
    options: FinetuneOptions,
    *,
    pad_id: int,
    val_score: Callable[[Any], float] | None = None,
    progress: Callable[[Progress], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> TrainResult:
    """Fine-tune ``model`` in place and return the best epoch's changed weights.

    Args:
        model: A ``transformers`` causal LM (float32, CPU).
        train_items: Tokenized training examples.
        val_items: Tokenized validation examples (their loss is always measured).
        options: Method, hyper-parameters, epochs, patience and the time budget.
        pad_id: Token id used for padding (masked out of the loss and attention).
        val_score: Scores the current model on validation (higher is better, e.g. the metric on greedy
            replies). Epochs are compared on it, ties broken by the lower validation loss; without it,
            on the validation loss alone.
        progress: Called after every optimisation step.
        clock: Time source (tests pass a fake one).

    Raises:
        ValueError: No training or no validation examples.
    """
    if not train_items or not val_items:
        raise ValueError(
            f"need training and validation examples, got {len(train_items)} and {len(val_items)}"
        )
    threads = torch.get_num_threads()
    if options.threads:
        torch.set_num_threads(options.threads)
    try:
        return _train(model, train_items, val_items, options, pad_id, val_score, progress, clock)
    finally:
        torch.set_num_threads(threads)


def _train(
    model: Any,
    train_items: Sequence[Tokenized],
    val_items: Sequence[Tokenized],
    options: FinetuneOptions,
    pad_id: int,
    val_score: Callable[[Any], float] | None,
    progress: Callable[[Progress], None] | None,
    clock: Callable[[], float],
) -> TrainResult:
    torch.manual_seed(options.seed)
    order = random.Random(options.seed)
    start = clock()
    params = _trainable_parameters(model, options)
    trainable = sum(p.numel() for p in params)
    optimizer = torch.optim.AdamW(params, lr=options.learning_rate, weight_decay=options.weight_decay)

    def judge() -> tuple[float, float | None, tuple[float, float]]:
        loss = _val_loss(model, val_items, pad_id, options.batch_size)
        score = val_score(model) if val_score is not None else None
        # The score decides; on a tie (frequent with a dozen validation questions) the lower loss does.
        return loss, score, (score if score is not None else 0.0, -loss)

    t0 = clock()
    val_loss, score, key = judge()
    val_seconds = clock() - t0
    history = [EpochRecord(0, None, val_loss, score, val_seconds, val_seconds)]
    best = _Leaders(key)
    steps = _Steps(start, math.ceil(len(train_items) / options.batch_size) * options.epochs)
    stopped = "epochs"
    for epoch in range(1, options.epochs + 1):
        model.train()
        items = list(train_items)
        order.shuffle(items)
        t_epoch = clock()
        epoch_run = _Epoch(model, optimizer, params, pad_id, options, epoch, progress, clock)
        losses, cut_short = epoch_run.run(items, steps, val_seconds)
        if cut_short:
            stopped = "time_budget"
        if not losses:
            break
        t_val = clock()
        val_loss, score, key = judge()
        val_seconds = clock() - t_val
        history.append(
            EpochRecord(epoch, sum(losses) / len(losses), val_loss, score, clock() - t_epoch, val_seconds)
        )
        logger.info(
            "finetune epoch %d: train loss %.4f, val loss %.4f, val score %s",
            epoch,
            history[-1].train_loss,
            val_loss,
            score,
        )
        if not best.record(epoch, key, params) and best.since_best >= options.patience:
            # A budget cut stays the reason: the epoch it cut short was judged, not completed.
            stopped = "early_stop" if stopped != "time_budget" else stopped
            break
        if stopped == "time_budget":
            break
    candidate = _candidate_weights(model, params, options, best)
    return TrainResult(
        changed=candidate if best.epoch > 0 else {},
        candidate=candidate,
        candidate_epoch=best.trained_epoch,
        history=history,
        best_epoch=best.epoch,
        stopped=stopped,
        seconds=clock() - start,
        peak_rss_mb=_peak_rss_mb(),
        n_train=len(train_items),
        n_val=len(val_items),
        trainable_parameters=trainable,
    )


def _trainable_parameters(model: Any, options: FinetuneOptions) -> list[torch.nn.Parameter]:
    """The parameters training updates: LoRA adapters added to ``model`` now, or every trainable weight."""
    if options.method == "lora":
        add_lora(
            model, rank=options.rank, alpha=options.alpha, dropout=options.dropout, targets=options.targets
        )
        return lora_parameters(model)
    return [p for p in model.parameters() if p.requires_grad]


@dataclass
class _Steps:
    """Optimisation steps so far and their durations (for the time budget and the progress estimate)."""

    start: float
    total: int
    count: int = 0
    seconds: list[float] = field(default_factory=list[float])

    def mean(self) -> float:
        return sum(self.seconds) / len(self.seconds) if self.seconds else 0.0


@dataclass
class _Leaders:
    """The best epoch so far (epoch 0, the untrained model, included) and the best trained epoch.

    The best epoch overall is either the best trained one or epoch 0, so only the best trained epoch's
    weights are kept (the candidate a caller may still want to measure).
    """

    key: tuple[float, float]
    epoch: int = 0
    trained_epoch: int = 0
    trained_key: tuple[float, float] = (0.0, 0.0)
    trained_state: list[torch.Tensor] = field(default_factory=list[torch.Tensor])
    since_best: int = 0

    def record(self, epoch: int, key: tuple[float, float], params: Sequence[torch.nn.Parameter]) -> bool:
        """Judge a trained epoch; whether it is the best so far (else it counts towards patience)."""
        if self.trained_epoch == 0 or _better(key, self.trained_key):
            self.trained_epoch, self.trained_key, self.trained_state = epoch, key, _snapshot(params)
        if _better(key, self.key):
            self.key, self.epoch = key, epoch
            self.since_best = 0
            return True
        self.since_best += 1
        return False


@dataclass(frozen=True)
class _Epoch:
    """One epoch's optimisation steps, with what they need."""

    model: Any
    optimizer: torch.optim.Optimizer
    params: Sequence[torch.nn.Parameter]
    pad_id: int
    options: FinetuneOptions
    epoch: int
    progress: Callable[[Progress], None] | None
    clock: Callable[[], float]

    def run(self, items: Sequence[Tokenized], steps: _Steps, val_seconds: float) -> tuple[list[float], bool]:
        """Step through ``items`` in batches; the step losses, and whether the time budget cut it short.

        A step is not started when it and the validation after it would overrun the budget.
        """
        options, clock = self.options, self.clock
        losses: list[float] = []
        for begin in range(0, len(items), options.batch_size):
            if clock() - steps.start + steps.mean() + val_seconds > options.time_budget_s:
                return losses, True
            t_step = clock()
            loss = _loss(self.model, items[begin : begin + options.batch_size], self.pad_id)
            self.optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.optimizer.step()
            steps.count += 1
            losses.append(float(loss.detach()))
            steps.seconds.append(clock() - t_step)
            if self.progress is not None:
                more = 1 if begin + options.batch_size < len(items) else 0
                self._report(steps, losses[-1], options.epochs - self.epoch + more, val_seconds)
        return losses, False

    def _report(self, steps: _Steps, loss: float, epochs_left: int, val_seconds: float) -> None:
        assert self.progress is not None
        self.progress(
            Progress(
                epoch=self.epoch,
                step=steps.count,
                steps_total=steps.total,
                loss=loss,
                elapsed_s=self.clock() - steps.start,
                eta_s=(steps.total - steps.count) * steps.mean() + epochs_left * val_seconds,
            )
        )


def _candidate_weights(
    model: Any, params: Sequence[torch.nn.Parameter], options: FinetuneOptions, best: _Leaders
) -> dict[str, torch.Tensor]:
    """The best trained epoch's weights, which the model is left on (none when no epoch trained).

    That is the candidate; it is also the proposal when it beat the untrained model.
    """
    if best.trained_epoch == 0:
        return {}
    _restore(params, best.trained_state)
    if options.method == "lora":
        return merge_lora(model)
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _better(key: tuple[float, float], best: tuple[float, float]) -> bool:
    if key[0] > best[0] + 1e-9:
        return True
    return abs(key[0] - best[0]) <= 1e-9 and key[1] > best[1] + 1e-6


def _snapshot(params: Sequence[torch.nn.Parameter]) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


@torch.no_grad()
def _restore(params: Sequence[torch.nn.Parameter], state: Sequence[torch.Tensor]) -> None:
    for param, saved in zip(params, state, strict=True):
        param.copy_(saved)


@torch.no_grad()
def current_weights(model: Any) -> dict[str, torch.Tensor]:
    """The model's weights as they would be written now: adapters merged (not unwrapped), or all of them.

    For a LoRA model, the adapted layers' merged weights (:func:`~geode.runtime.finetune.lora.merged_weights`);
    for a fully trained one, every parameter.
    """
    merged = merged_weights(model)
    if merged:
        return merged
    return {name: p.detach().clone() for name, p in model.named_parameters()}
