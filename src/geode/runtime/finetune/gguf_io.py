"""GGUF <-> torch for llama-architecture models: load a GGUF into ``transformers``, write trained weights back.

Loading is done here rather than through ``transformers``' own GGUF reader (which needs ``accelerate``)
because writing back must be the exact inverse of reading, and both directions hinge on one detail:
llama.cpp stores the query and key projections of llama models with their rows *permuted* (its RoPE
pairs adjacent dimensions; Hugging Face's pairs the two halves of each head). ``convert_hf_to_gguf``
applies :func:`permute_qk`; reading undoes it with :func:`unpermute_qk`; writing applies it again.
A mistake here does not fail loudly: the model just answers worse. ``tests/unit/runtime/finetune/test_finetune_gguf``
checks the round trip and the slow test checks that the loaded model predicts the same next tokens as
llama.cpp on the real file.

Writing back copies the base file (metadata, tokenizer, every tensor's bytes) and replaces only the
tensors that training changed, quantised to a chosen type: the base's own, a given one, or ``auto``: the
base's type unless it is coarser than Q8_0, then Q8_0. Why ``auto``: a LoRA update is far smaller than a
4-bit type's quantisation step. Measured on a projection of the embedded Q4_1 model with an update of
the size a few LoRA steps leave (rms 2.5e-4 to 7e-4), requantising to Q4_1 kept 6% of the update (the
weights round back to the base's grid), Q5_1 kept it only in part and noisily, Q8_0 and F16 all of it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geode.errors import ModelFileError

if TYPE_CHECKING:
    import gguf
    import torch
    from transformers import LlamaForCausalLM

__all__ = [
    "GGUFModelInfo",
    "gguf_name",
    "hf_name",
    "load_llama",
    "permute_qk",
    "quant_type",
    "read_info",
    "unpermute_qk",
    "write_gguf",
    "write_type",
]

_SUPPORTED_ARCHS = frozenset({"llama"})
# GGUF tensor name (without the block prefix) -> Hugging Face llama parameter name.
_BLOCK_NAMES: Mapping[str, str] = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES: Mapping[str, str] = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.weight$")
_HF_BLOCK_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)\.weight$")
# Quantisation types gguf-py can write (numpy implementations), by name.
WRITABLE_TYPES = ("F32", "F16", "Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0")
_KEEPS_UPDATES = frozenset({"F32", "F16", "BF16", "Q8_0"})
"""Base types a LoRA update survives being written in; ``auto`` writes anything coarser as Q8_0."""


def write_type(qtype: str | None, base_type: str) -> str:
    """The type a replaced tensor is written in: ``qtype``; the base's (``None``); or ``auto`` (see above)."""
    if qtype is None:
        return base_type
    if qtype == "auto":
        return base_type if base_type in _KEEPS_UPDATES and base_type in WRITABLE_TYPES else "Q8_0"
    return qtype


def _gguf() -> Any:
    try:
        import gguf
    except ImportError as err:
        from geode.errors import MissingExtraError

        raise MissingExtraError("fine-tuning the embedded model", "finetune") from err
    return gguf


def hf_name(name: str) -> str | None:
    """The Hugging Face llama parameter name of a GGUF tensor (``None`` for tensors llama does not have)."""
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    match = _BLOCK_RE.match(name)
    if match is None or match.group(2) not in _BLOCK_NAMES:
        return None
    return f"model.layers.{match.group(1)}.{_BLOCK_NAMES[match.group(2)]}.weight"


def gguf_name(name: str) -> str | None:
    """The GGUF tensor name of a Hugging Face llama parameter (the inverse of :func:`hf_name`)."""
    for gname, hname in _GLOBAL_NAMES.items():
        if hname == name:
            return gname
    match = _HF_BLOCK_RE.match(name)
    if match is None:
        return None
    for short, long in _BLOCK_NAMES.items():
        if long == match.group(2):
            return f"blk.{match.group(1)}.{short}.weight"
    return None


def permute_qk(weights: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face -> llama.cpp row order of a query/key projection (``convert_hf_to_gguf``'s permute).

    Args:
        weights: ``(n_head * head_dim, in_features)``; for keys, ``n_head`` is the number of KV heads.
        n_head: Heads the rows are split into.
    """
    rows = weights.shape[0]
    return (
        weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def unpermute_qk(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp -> Hugging Face row order (the inverse of :func:`permute_qk`)."""
    rows = weights.shape[0]
    return (
        weights.reshape(n_head, rows // n_head // 2, 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


@dataclass(frozen=True)
class GGUFModelInfo:
    """What a llama GGUF file says about its model."""

    arch: str
    n_layer: int
    hidden: int
    intermediate: int
    n_head: int
    n_head_kv: int
    vocab: int
    context_length: int
    rope_theta: float
    rms_eps: float
    tied_embeddings: bool
    bos_token_id: int | None
    eos_token_id: int | None
    tensor_types: Mapping[str, str]
    """GGUF tensor name -> quantisation type name (``Q4_1``, ``F32``...)."""

    def heads_of(self, name: str) -> int | None:
        """How many heads a query/key tensor's rows are permuted over (``None`` for other tensors)."""
        if name.endswith(".attn_q.weight"):
            return self.n_head
        if name.endswith(".attn_k.weight"):
            return self.n_head_kv
        return None


def _field(reader: Any, key: str, default: Any = None) -> Any:
    field = reader.get_field(key)
    return default if field is None else field.contents()


def _reader(path: Path) -> Any:
    gguf = _gguf()
    try:
        return gguf.GGUFReader(str(path))
    except (OSError, ValueError) as err:
        raise ModelFileError(f"cannot read GGUF file {str(path)!r}: {err}") from err


def _info_of(reader: Any, path: Path) -> GGUFModelInfo:
    arch = str(_field(reader, "general.architecture", ""))
    if arch not in _SUPPORTED_ARCHS:
        raise ModelFileError(
            f"{str(path)!r} is a {arch or 'unknown'} model; fine-tuning supports {', '.join(sorted(_SUPPORTED_ARCHS))}",
            hint="fine-tune a llama-architecture GGUF (SmolLM2, Llama, TinyLlama...)",
        )
    names = {t.name for t in reader.tensors}
    tokens = reader.get_field("tokenizer.ggml.tokens")
    embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    vocab = int(_field(reader, f"{arch}.vocab_size", 0) or (len(tokens.data) if tokens else embd.shape[-1]))
    n_head = int(_field(reader, f"{arch}.attention.head_count"))
    return GGUFModelInfo(
        arch=arch,
        n_layer=int(_field(reader, f"{arch}.block_count")),
        hidden=int(_field(reader, f"{arch}.embedding_length")),
        intermediate=int(_field(reader, f"{arch}.feed_forward_length")),
        n_head=n_head,
        n_head_kv=int(_field(reader, f"{arch}.attention.head_count_kv", n_head)),
        vocab=vocab,
        context_length=int(_field(reader, f"{arch}.context_length", 2048)),
        rope_theta=float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
        rms_eps=float(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        tied_embeddings="output.weight" not in names,
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_id=_field(reader, "tokenizer.ggml.eos_token_id"),
        tensor_types={t.name: t.tensor_type.name for t in reader.tensors},
    )


def read_info(path: str | Path) -> GGUFModelInfo:
    """The model description of a llama GGUF file (no weights are read)."""
    return _info_of(_reader(Path(path)), Path(path))


def _dequantized(tensor: Any) -> np.ndarray:
    gguf = _gguf()
    data = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    return np.ascontiguousarray(data, dtype=np.float32)


def load_llama(path: str | Path) -> tuple[LlamaForCausalLM, GGUFModelInfo]:
    """A float32 ``transformers`` llama model with the (dequantised) weights of a GGUF file.

    Raises:
        ModelFileError: Not a readable llama GGUF, or a tensor the model does not have.
        MissingExtraError: ``torch``, ``transformers`` or ``gguf`` is not installed.
    """
    try:
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError as err:
        from geode.errors import MissingExtraError

        raise MissingExtraError("fine-tuning the embedded model", "finetune") from err
    source = Path(path)
    reader = _reader(source)
    info = _info_of(reader, source)
    config = LlamaConfig(
        vocab_size=info.vocab,
        hidden_size=info.hidden,
        intermediate_size=info.intermediate,
        num_hidden_layers=info.n_layer,
        num_attention_heads=info.n_head,
        num_key_value_heads=info.n_head_kv,
        max_position_embeddings=info.context_length,
        rms_norm_eps=info.rms_eps,
        rope_parameters={"rope_type": "default", "rope_theta": info.rope_theta},
        tie_word_embeddings=info.tied_embeddings,
        bos_token_id=info.bos_token_id,
        eos_token_id=info.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    state: dict[str, torch.Tensor] = {}
    for tensor in reader.tensors:
        name = hf_name(tensor.name)
        if name is None:
            raise ModelFileError(f"{str(source)!r}: unexpected tensor {tensor.name!r} for a llama model")
        weights = _dequantized(tensor)
        heads = info.heads_of(tensor.name)
        if heads is not None:
            weights = unpermute_qk(weights, heads)
        state[name] = torch.from_numpy(weights.copy())
    missing, unexpected = model.load_state_dict(state, strict=False)
    # With tied embeddings lm_head shares embed_tokens' storage; nothing else may be missing.
    missing = [m for m in missing if not (info.tied_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise ModelFileError(
            f"{str(source)!r} does not fit a llama model: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    if info.tied_embeddings:
        model.tie_weights()
    model.eval()
    return model, info


def quant_type(name: str) -> gguf.GGMLQuantizationType:
    """The gguf quantisation type called ``name`` (one of :data:`WRITABLE_TYPES`)."""
    gguf = _gguf()
    if name not in WRITABLE_TYPES:
        raise ValueError(f"cannot write GGUF tensors as {name!r}; choose one of {', '.join(WRITABLE_TYPES)}")
    return gguf.GGMLQuantizationType[name]


def _encode(weights: np.ndarray, qtype_name: str) -> tuple[np.ndarray, Any]:
    gguf = _gguf()
    qtype = quant_type(qtype_name)
    if qtype_name == "F32":
        return np.ascontiguousarray(weights, dtype=np.float32), qtype
    if qtype_name == "F16":
        return np.ascontiguousarray(weights, dtype=np.float16), qtype
    return gguf.quants.quantize(np.ascontiguousarray(weights, dtype=np.float32), qtype), qtype


def write_gguf(
    base: str | Path,
    out: str | Path,
    weights: Mapping[str, np.ndarray],
    *,
    qtype: str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Copy ``base`` to ``out``, replacing the tensors in ``weights`` (Hugging Face names, HF row order).

    Args:
        base: The GGUF the weights were trained from (its metadata, tokenizer and other tensors are kept).
        out: Where to write the new file.
        weights: Changed parameters by Hugging Face name (``model.layers.0.self_attn.q_proj.weight``);
            query/key rows are permuted back to llama.cpp's order here.
        qtype: Quantisation type for the replaced tensors; ``None``: each keeps the base tensor's type;
            ``auto``: the base's type unless it is coarser than Q8_0 (:func:`write_type`).
        metadata: Extra string key-values to add (``geode.*`` lineage keys).

    Raises:
        ModelFileError: A name has no tensor in the base file, or a shape differs.
    """
    gguf = _gguf()
    source = Path(base)
    target = Path(out)
    reader = _reader(source)
    info = _info_of(reader, source)
    by_gguf: dict[str, np.ndarray] = {}
    for name, array in weights.items():
        gname = gguf_name(name)
        if gname is None or gname not in info.tensor_types:
            raise ModelFileError(f"{str(source)!r} has no tensor for parameter {name!r}")
        heads = info.heads_of(gname)
        by_gguf[gname] = permute_qk(array, heads) if heads is not None else np.asarray(array)
    writer = gguf.GGUFWriter(str(target), arch=info.arch, endianess=reader.endianess)
    alignment = _field(reader, "general.alignment")
    if alignment is not None:
        writer.data_alignment = int(alignment)
    for field in reader.fields.values():
        # Virtual fields and the architecture are written by GGUFWriter itself.
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue
        val_type = field.types[0]
        sub_type = field.types[-1] if val_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), val_type, sub_type=sub_type)
    for key, value in (metadata or {}).items():
        writer.add_string(key, value)
    payloads: list[np.ndarray] = []
    for tensor in reader.tensors:
        new = by_gguf.get(tensor.name)
        if new is None:
            data, ttype = tensor.data, tensor.tensor_type
        else:
            expected = tuple(int(d) for d in reversed(tensor.shape))
            if tuple(new.shape) != expected:
                raise ModelFileError(
                    f"parameter for {tensor.name} has shape {tuple(new.shape)}, the base has {expected}"
                )
            data, ttype = _encode(new, write_type(qtype, tensor.tensor_type.name))
        payloads.append(data)
        writer.add_tensor_info(tensor.name, data.shape, data.dtype, data.nbytes, ttype)
    target.parent.mkdir(parents=True, exist_ok=True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for data in payloads:
        writer.write_tensor_data(data, tensor_endianess=reader.endianess)
    writer.close()
    return target
