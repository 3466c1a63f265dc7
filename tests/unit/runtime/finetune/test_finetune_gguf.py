"""GGUF <-> torch for the fine-tune: a tiny llama GGUF built here, loaded, written back, compared."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.tiers import require_tier

pytestmark = pytest.mark.finetune
require_tier("finetune", import_name="torch")
require_tier("finetune", import_name="transformers")
gguf = require_tier("finetune", import_name="gguf")

import torch  # noqa: E402

from geode.errors import ModelFileError  # noqa: E402
from geode.runtime.finetune.gguf_io import (  # noqa: E402
    gguf_name,
    hf_name,
    load_llama,
    permute_qk,
    read_info,
    unpermute_qk,
    write_gguf,
    write_type,
)
from geode.runtime.finetune.lora import add_lora, lora_parameters, merge_lora, merged_weights  # noqa: E402

HIDDEN, N_HEAD, N_HEAD_KV, FFN, VOCAB, LAYERS = 64, 4, 2, 96, 40, 2
KV_DIM = HIDDEN // N_HEAD * N_HEAD_KV


def write_tiny_llama(
    path: Path, *, arch: str = "llama", seed: int = 0, vocab: int = VOCAB
) -> dict[str, np.ndarray]:
    """A two-block llama GGUF with random weights; blk.0.attn_q is Q8_0, the rest F32.

    Returns the tensors as llama.cpp holds them (rows permuted for q/k; the Q8_0 one dequantised).
    """
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), arch=arch)
    writer.add_block_count(LAYERS)
    writer.add_context_length(128)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    writer.add_string("general.name", "tiny")
    shapes: dict[str, tuple[int, ...]] = {
        "token_embd.weight": (vocab, HIDDEN),
        "output_norm.weight": (HIDDEN,),
    }
    for b in range(LAYERS):
        shapes |= {
            f"blk.{b}.attn_norm.weight": (HIDDEN,),
            f"blk.{b}.ffn_norm.weight": (HIDDEN,),
            f"blk.{b}.attn_q.weight": (HIDDEN, HIDDEN),
            f"blk.{b}.attn_k.weight": (KV_DIM, HIDDEN),
            f"blk.{b}.attn_v.weight": (KV_DIM, HIDDEN),
            f"blk.{b}.attn_output.weight": (HIDDEN, HIDDEN),
            f"blk.{b}.ffn_gate.weight": (FFN, HIDDEN),
            f"blk.{b}.ffn_up.weight": (FFN, HIDDEN),
            f"blk.{b}.ffn_down.weight": (HIDDEN, FFN),
        }
    tensors: dict[str, np.ndarray] = {}
    for name, shape in shapes.items():
        values = (rng.standard_normal(shape) * 0.1).astype(np.float32)
        if name.endswith("norm.weight"):
            values = 1.0 + values
        if name == "blk.0.attn_q.weight":
            data = gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, data, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            tensors[name] = gguf.quants.dequantize(data, gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, values)
            tensors[name] = values
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return tensors


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    path = tmp_path / "tiny.gguf"
    return path, write_tiny_llama(path)


def _read(path: Path) -> dict[str, tuple[str, np.ndarray]]:
    reader = gguf.GGUFReader(str(path))
    return {
        t.name: (t.tensor_type.name, gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32))
        for t in reader.tensors
    }


def test_permute_is_not_the_identity_and_unpermute_inverts_it() -> None:
    w = np.arange(HIDDEN * 4, dtype=np.float32).reshape(HIDDEN, 4)
    permuted = permute_qk(w, N_HEAD)
    assert not np.array_equal(permuted, w)
    np.testing.assert_array_equal(unpermute_qk(permuted, N_HEAD), w)
    # Within each head, llama.cpp interleaves the two halves: row 1 is HF's row head_dim/2.
    assert permuted[1, 0] == w[HIDDEN // N_HEAD // 2, 0]


def test_names_map_both_ways() -> None:
    assert hf_name("blk.3.attn_k.weight") == "model.layers.3.self_attn.k_proj.weight"
    assert gguf_name("model.layers.3.mlp.down_proj.weight") == "blk.3.ffn_down.weight"
    assert gguf_name("model.embed_tokens.weight") == "token_embd.weight"
    assert hf_name("blk.0.unknown.weight") is None


def test_load_gives_hugging_face_row_order(tiny: tuple[Path, dict[str, np.ndarray]]) -> None:
    path, tensors = tiny
    model, info = load_llama(path)
    assert (info.n_head, info.n_head_kv, info.tied_embeddings) == (N_HEAD, N_HEAD_KV, True)
    layer: Any = model.model.layers[0].self_attn
    np.testing.assert_allclose(
        layer.q_proj.weight.detach().numpy(), unpermute_qk(tensors["blk.0.attn_q.weight"], N_HEAD)
    )
    np.testing.assert_allclose(
        layer.k_proj.weight.detach().numpy(), unpermute_qk(tensors["blk.0.attn_k.weight"], N_HEAD_KV)
    )
    np.testing.assert_array_equal(layer.v_proj.weight.detach().numpy(), tensors["blk.0.attn_v.weight"])
    # Tied embeddings: the output projection is the embedding matrix.
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_round_trip_keeps_every_weight(tiny: tuple[Path, dict[str, np.ndarray]], tmp_path: Path) -> None:
    path, tensors = tiny
    model, _ = load_llama(path)
    weights = {
        name: p.detach().numpy() for name, p in model.named_parameters() if name.endswith("proj.weight")
    }
    out = write_gguf(path, tmp_path / "out.gguf", weights, qtype="F32", metadata={"geode.test": "yes"})
    written = _read(out)
    assert set(written) == set(tensors)
    for name, original in tensors.items():
        np.testing.assert_allclose(written[name][1], original, rtol=0, atol=1e-7, err_msg=name)
    assert written["blk.0.attn_q.weight"][0] == "F32"
    reader = gguf.GGUFReader(str(out))
    assert reader.get_field("geode.test").contents() == "yes"
    assert reader.get_field("llama.attention.head_count_kv").contents() == N_HEAD_KV
    # And what is written loads back to the same torch model.
    again, _ = load_llama(out)
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=name)


def test_written_tensors_keep_the_base_type_unless_told(
    tiny: tuple[Path, dict[str, np.ndarray]], tmp_path: Path
) -> None:
    path, tensors = tiny
    model, _ = load_llama(path)
    q = model.get_parameter("model.layers.0.self_attn.q_proj.weight").detach().numpy()
    out = write_gguf(path, tmp_path / "same.gguf", {"model.layers.0.self_attn.q_proj.weight": q + 0.01})
    written = _read(out)
    kind, values = written["blk.0.attn_q.weight"]
    assert kind == "Q8_0"
    np.testing.assert_allclose(values, tensors["blk.0.attn_q.weight"] + 0.01, atol=2e-3)
    # Untouched tensors are copied exactly.
    np.testing.assert_array_equal(written["blk.1.ffn_up.weight"][1], tensors["blk.1.ffn_up.weight"])
    up = np.linspace(-1, 1, FFN * HIDDEN, dtype=np.float32).reshape(FFN, HIDDEN)
    out = write_gguf(path, tmp_path / "q4.gguf", {"model.layers.1.mlp.up_proj.weight": up}, qtype="Q4_1")
    kind, values = _read(out)["blk.1.ffn_up.weight"]
    assert kind == "Q4_1"
    # Q4_1 has 16 levels per block of 32: close to the weights, not equal to them.
    np.testing.assert_allclose(values, up, atol=(2 / (FFN * HIDDEN)) * 32 / 15 + 1e-6)


def test_auto_writes_a_4_bit_base_tensor_as_q8_0_which_keeps_a_lora_sized_update(
    tiny: tuple[Path, dict[str, np.ndarray]], tmp_path: Path
) -> None:
    path, _ = tiny
    name = "model.layers.1.mlp.up_proj.weight"
    rng = np.random.default_rng(0)
    weights = rng.normal(0, 0.2, (FFN, HIDDEN)).astype(np.float32)
    q4 = _read(write_gguf(path, tmp_path / "q4.gguf", {name: weights}, qtype="Q4_1"))["blk.1.ffn_up.weight"]
    base = tmp_path / "q4.gguf"  # a base whose projection is Q4_1, as the embedded model's are
    update = rng.normal(0, 3e-4, (FFN, HIDDEN)).astype(np.float32)  # the size a few LoRA steps leave
    kept = {}
    for qtype in ("auto", None):
        out = write_gguf(base, tmp_path / f"{qtype}.gguf", {name: q4[1] + update}, qtype=qtype)
        kind, values = _read(out)["blk.1.ffn_up.weight"]
        kept[kind] = float(((values - q4[1]) * update).sum() / (update * update).sum())
    # auto: Q8_0, and the update survives; the base's own Q4_1 rounds it back onto the base's grid.
    assert set(kept) == {"Q8_0", "Q4_1"}
    assert kept["Q8_0"] == pytest.approx(1.0, abs=0.1) and kept["Q4_1"] < 0.3
    assert write_type("auto", "F16") == "F16" and write_type("auto", "Q5_1") == "Q8_0"
    assert write_type(None, "Q4_1") == "Q4_1" and write_type("F16", "Q4_1") == "F16"


def test_write_refuses_unknown_names_and_shapes(
    tiny: tuple[Path, dict[str, np.ndarray]], tmp_path: Path
) -> None:
    path, _ = tiny
    with pytest.raises(ModelFileError, match="no tensor"):
        write_gguf(path, tmp_path / "x.gguf", {"model.layers.9.mlp.up_proj.weight": np.zeros((FFN, HIDDEN))})
    with pytest.raises(ModelFileError, match="shape"):
        write_gguf(
            path, tmp_path / "x.gguf", {"model.layers.0.mlp.up_proj.weight": np.zeros((HIDDEN, HIDDEN))}
        )


def test_other_architectures_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.gguf"
    write_tiny_llama(path, arch="qwen2")
    with pytest.raises(ModelFileError, match="qwen2"):
        read_info(path)


def test_lora_starts_at_the_base_model_and_merges_into_the_same_function(
    tiny: tuple[Path, dict[str, np.ndarray]],
) -> None:
    path, _ = tiny
    model, _ = load_llama(path)
    ids = torch.tensor([[1, 5, 9, 3, 7]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
    wrapped = add_lora(model, rank=4, alpha=8.0, dropout=0.0)
    assert len(wrapped) == LAYERS * 7
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in lora_parameters(model)}
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, before)
        for p in lora_parameters(model):
            p.add_(0.05)  # a non-zero update, as training would leave
        adapted = model(input_ids=ids).logits
    assert not torch.allclose(adapted, before)
    preview = merged_weights(model)  # what an epoch is written as while training goes on
    assert any(type(m).__name__ == "LoRALinear" for m in model.modules())
    changed = merge_lora(model)
    assert preview.keys() == changed.keys()
    for name, weight in changed.items():
        torch.testing.assert_close(preview[name], weight)
    assert len(changed) == LAYERS * 7
    assert not any(type(m).__name__ == "LoRALinear" for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, adapted, rtol=1e-4, atol=1e-5)
