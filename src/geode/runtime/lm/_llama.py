"""The llama.cpp backend behind :class:`~geode.runtime.lm.local.LocalLM`: loading its models.

DSPy 3.4's extension point for a custom model is an *engine*: an object with
``complete(Request) -> Response`` (and ``stream``) handed to ``dspy.LM(..., engine=...)``. DSPy keeps its
cache, retries, ``n`` fan-out, history, usage tracking and callbacks; the engine only turns one canonical
request into one response. The backend's modules, one job each:

- this module: importing llama.cpp for a shared CPU, checking and loading a model once per spec, its
  chat template and its compiled decoding grammars;
- ``_llama_grammar``: a ``response_format`` in llama.cpp's spelling, a JSON schema as GBNF;
- ``_llama_request``: a canonical request as chat messages and sampling arguments;
- ``_llama_stopping``: stopping criteria (token count, verbatim repetition) and streamed stop strings;
- ``_llama_engine``: :class:`LlamaCppEngine` and :class:`AsyncLlamaCppEngine`.

Their public names are importable from here too.

A loaded ``llama_cpp.Llama`` is not thread-safe and holds a KV cache that makes a shared prompt prefix
free on the next call, so each model file is loaded once per process and every use goes through its lock.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

from dspy.lm15 import UnsupportedFeatureError

from geode.errors import MissingExtraError, ModelFileError

# The `X as X` imports keep the backend's names importable by this path, where tests import them.
from geode.runtime.lm._llama_engine import SUPPORTED_PARAMS as SUPPORTED_PARAMS
from geode.runtime.lm._llama_engine import AsyncLlamaCppEngine, LlamaCppEngine
from geode.runtime.lm._llama_grammar import json_schema_grammar, llama_response_format
from geode.runtime.lm._llama_request import PROVIDER as PROVIDER
from geode.runtime.lm._llama_request import chat_messages as chat_messages
from geode.runtime.lm._llama_request import sampling_kwargs as sampling_kwargs
from geode.runtime.lm._llama_stopping import _RepetitionStop as _RepetitionStop
from geode.runtime.lm._llama_stopping import _StopScanner as _StopScanner
from geode.runtime.lm._llama_stopping import _TokenCounter as _TokenCounter
from geode.runtime.lm._threads import usable_cores

if TYPE_CHECKING:
    from llama_cpp import Llama, LlamaGrammar
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

__all__ = [
    "AsyncLlamaCppEngine",
    "LlamaCppEngine",
    "LoadedModel",
    "ModelSpec",
    "import_llama_cpp",
    "json_schema_grammar",
    "llama_response_format",
    "load_model",
]

logger = logging.getLogger(__name__)

_GRAMMAR_CACHE_SIZE: Final = 128
_GGUF_MAGIC: Final = b"GGUF"


def import_llama_cpp() -> Any:
    """Import ``llama_cpp``, configured for a shared CPU, or say how to install it.

    Raises:
        MissingExtraError: ``llama-cpp-python`` is not installed.
    """
    # llama.cpp's OpenMP threads spin while waiting for work. On a machine whose cores are shared with
    # other processes, spinning threads steal the cores the working threads need: measured 3-4x slower
    # decoding on 2 busy cores. Passive waiting costs nothing when the machine is idle. libgomp reads the
    # variable once, when llama.cpp's library loads, so it must be set before the first import.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import llama_cpp
    except ImportError as exc:
        raise MissingExtraError("the embedded LM", "local") from exc
    return llama_cpp


@dataclass(frozen=True)
class ModelSpec:
    """Everything that makes two loaded llama.cpp models different; one load per spec per process."""

    path: Path
    context_size: int
    threads: int | None
    """``None``: every core this process may use (:func:`~geode.runtime.lm._threads.usable_cores`)."""
    flash_attn: bool = True


class LoadedModel:
    """One ``llama_cpp.Llama`` shared by every ``LocalLM`` on the same spec, with the lock for its use.

    Attributes:
        spec: What was loaded.
        llama: The llama.cpp model. Hold :attr:`lock` for any call on it.
        lock: Serialises all use of :attr:`llama` (it is not thread-safe).
    """

    def __init__(self, spec: ModelSpec, llama: Llama) -> None:
        self.spec = spec
        self.llama = llama
        self.lock = threading.Lock()
        self.formatter = _chat_formatter(spec.path, llama)
        self._grammars: OrderedDict[str, LlamaGrammar] = OrderedDict()
        self._grammar_lock = threading.Lock()

    def grammar(self, response_format: Mapping[str, Any]) -> LlamaGrammar:
        """The decoding grammar for a canonical ``response_format``, built once per distinct schema."""
        key = json.dumps(response_format, sort_keys=True)
        with self._grammar_lock:
            cached = self._grammars.get(key)
            if cached is not None:
                self._grammars.move_to_end(key)
                return cached
        grammar = _build_grammar(response_format)
        with self._grammar_lock:
            self._grammars[key] = grammar
            while len(self._grammars) > _GRAMMAR_CACHE_SIZE:
                self._grammars.popitem(last=False)
        return grammar

    def prompt_tokens(self, messages: Sequence[Mapping[str, str]]) -> tuple[list[int], list[str]]:
        """Render messages with the model's own chat template and tokenize them, as llama.cpp does.

        Returns:
            The prompt tokens and the template's stop strings.
        """
        formatted = self.formatter(messages=cast(Any, list(messages)))
        tokens = self.llama.tokenize(
            formatted.prompt.encode("utf-8"), add_bos=not formatted.added_special, special=True
        )
        stop = formatted.stop
        stops = [] if stop is None else [stop] if isinstance(stop, str) else list(stop)
        return tokens, [s for s in stops if s]


_models: dict[ModelSpec, LoadedModel] = {}
_models_lock = threading.Lock()


def check_model_file(path: Path) -> None:
    """Fail early, in one line, if ``path`` cannot be a GGUF model.

    Raises:
        ModelFileError: The file is missing, unreadable, or not GGUF.
    """
    hint = "set GEODE_LM_MODEL_PATH (or model_path=) to a .gguf file, or unset it to use the bundled model"
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}", hint=hint)
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise ModelFileError(f"cannot read model file {path}: {exc.strerror or exc}", hint=hint) from exc
    if magic != _GGUF_MAGIC:
        raise ModelFileError(f"{path} is not a GGUF model file", hint=hint)


def load_model(spec: ModelSpec) -> LoadedModel:
    """Load the model for ``spec`` once per process; later calls return the same object.

    Raises:
        MissingExtraError: ``llama-cpp-python`` is not installed.
        ModelFileError: The file is not a loadable GGUF chat model.
    """
    with _models_lock:
        loaded = _models.get(spec)
        if loaded is not None:
            return loaded
        check_model_file(spec.path)
        llama_cpp = import_llama_cpp()
        threads = spec.threads or usable_cores()
        try:
            llama = llama_cpp.Llama(
                model_path=str(spec.path),
                n_ctx=spec.context_size,
                n_threads=threads,
                n_threads_batch=threads,
                flash_attn=spec.flash_attn,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelFileError(
                f"llama.cpp could not load {spec.path}: {str(exc).splitlines()[0] if str(exc) else exc!r}",
                hint="check that the file is a complete GGUF model (re-download or reinstall it)",
            ) from exc
        loaded = LoadedModel(spec, llama)
        if not _models:
            atexit.register(_close_all)
        _models[spec] = loaded
        return loaded


def _close_all() -> None:
    # Free the models while llama_cpp's module globals still exist; freed during interpreter teardown
    # instead, llama-cpp-python's finaliser fails with "'NoneType' object is not callable".
    with _models_lock:
        loaded_models = list(_models.values())
        _models.clear()
    for loaded in loaded_models:
        # A generation still running in a daemon thread keeps its model; the process is ending anyway.
        if loaded.lock.acquire(timeout=1.0):
            try:
                loaded.llama.close()
            finally:
                loaded.lock.release()


def _chat_formatter(path: Path, llama: Llama) -> Jinja2ChatFormatter:
    # The same formatter llama-cpp-python builds from GGUF metadata for create_chat_completion. Rendering
    # the prompt here gives exact prompt token counts (also when streaming) and the reusable KV prefix.
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = llama.metadata.get("tokenizer.chat_template")
    if not template:
        raise ModelFileError(
            f"{path} has no chat template, so it is not an instruct/chat model",
            hint="use an instruct GGUF model (its metadata carries tokenizer.chat_template)",
        )
    eos_id, bos_id = llama.token_eos(), llama.token_bos()
    eos = llama.detokenize([eos_id], special=True).decode("utf-8", "replace") if eos_id != -1 else ""
    bos = llama.detokenize([bos_id], special=True).decode("utf-8", "replace") if bos_id != -1 else ""
    return Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos, stop_token_ids=[eos_id])


def _build_grammar(response_format: Mapping[str, Any]) -> LlamaGrammar:
    from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

    converted = llama_response_format(response_format)
    assert converted is not None
    schema = converted.get("schema")
    if schema is not None:
        try:
            return LlamaGrammar.from_string(json_schema_grammar(schema), verbose=False)
        except UnsupportedFeatureError as exc:
            # Any-JSON still beats free text for a small model; DSPy's own adapters degrade the same way.
            logger.warning("constraining to any JSON instead of the output schema: %s", exc.message)
    return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
