"""Stopping criteria and stop strings for llama.cpp generation: counting, repetition, streamed stops."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt


class _TokenCounter:
    """A llama.cpp stopping criterion that never stops, only counts sampled tokens.

    llama-cpp-python reports no usage while streaming. Each sampled token passes through the stopping
    criteria once, with the evaluated tokens so far; one more call after the loop repeats the last length.
    """

    def __init__(self) -> None:
        self.prompt_tokens: int | None = None
        self.sampled = 0
        self._last_length = -1

    def __call__(self, input_ids: npt.NDArray[np.intc], logits: npt.NDArray[np.single]) -> bool:
        length = len(input_ids)
        if length > self._last_length:
            if self.prompt_tokens is None:
                self.prompt_tokens = length
            self.sampled += 1
            self._last_length = length
        return False


class _RepetitionStop:
    """A llama.cpp stopping criterion that ends free text once the model repeats itself verbatim.

    A small model that loses the thread copies its own last sentence (or one token) until ``max_tokens``:
    measured on SmolLM2-135M, three answers of 47 ran to 512 tokens that way, more time than all the
    others together. Generation stops when the last ``ngram`` sampled tokens already occurred earlier in
    the output. The repeat itself stays in the text; everything the model said before it is kept.
    """

    def __init__(self, prompt_tokens: int, ngram: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.ngram = ngram

    def __call__(self, input_ids: npt.NDArray[np.intc], logits: npt.NDArray[np.single]) -> bool:
        import numpy as np
        from numpy.lib.stride_tricks import sliding_window_view

        out = np.asarray(input_ids[self.prompt_tokens :])
        n = self.ngram
        if len(out) <= n:
            return False
        earlier = sliding_window_view(out[:-1], n)
        return bool((earlier == out[-n:]).all(axis=1).any())


class _StopScanner:
    """Finds stop strings in streamed text, holding back a tail that may be the start of one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.buffer = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        self.buffer += text
        if not self.stops:
            out, self.buffer = self.buffer, ""
            return out
        hits = [i for i in (self.buffer.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            out, self.buffer = self.buffer[: min(hits)], ""
            return out
        keep = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self.buffer)), 0, -1):
                if stop.startswith(self.buffer[-k:]):
                    keep = max(keep, k)
                    break
        out, self.buffer = self.buffer[: len(self.buffer) - keep], self.buffer[len(self.buffer) - keep :]
        return out

    def flush(self) -> str:
        out, self.buffer = self.buffer, ""
        return out
