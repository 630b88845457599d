"""model.gguf.adapter: a LoRA adapter as llama.cpp's GGUF LoRA adapter, read back with the gguf package
(and, where llama-cpp-python is installed, applied by llama.cpp itself to the base model's file)."""

import gguf
import numpy as np
import pytest
import torch

from model.checkpoint import save_model
from model.gguf.adapter import check_base_gguf, write_gguf_adapter
from model.gguf.layout import unpermute_rotary_rows
from model.gguf.vocab import ExportError
from model.gguf.write import write_gguf
from model.lora import lora_layers
from model.lora_config import LoRAConfig
from model.lora_surgery import apply_lora, merge_lora
from model.peft import save_adapter
from tests.helpers import random_model, tiny_config

ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def base_and_adapter(tmp_path, config, lora: LoRAConfig, seed: int = 0):
    """A base model folder and an adapter of it whose B is random (a trained adapter's is not zero)."""
    model = random_model(config, seed)
    save_model(model, tmp_path / "base")
    apply_lora(model, lora)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.normal_(0, 0.05)
    save_adapter(model, tmp_path / "adapter", lora, base_model=str(tmp_path / "base"))
    return model


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])  # llama's q and k rows are permuted, qwen2's not
@pytest.mark.parametrize("rslora", [False, True])
def test_the_adapter_holds_llama_cpp_s_keys_and_its_factors_add_up_to_the_merged_weights(tmp_path, model_type, rslora):
    lora = LoRAConfig(r=4, alpha=8, targets=ALL_TARGETS, use_rslora=rslora)
    model = base_and_adapter(tmp_path, tiny_config(model_type=model_type), lora)
    write_gguf_adapter(tmp_path / "adapter", tmp_path / "base", tmp_path / "me.gguf", "f16", "me")

    reader = gguf.GGUFReader(tmp_path / "me.gguf")
    fields = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    assert fields["general.type"] == "adapter" and fields["adapter.type"] == "lora"
    assert fields["general.architecture"] == model_type
    alpha = fields["adapter.lora.alpha"]
    assert alpha / lora.r == pytest.approx(lora.scaling)  # llama.cpp scales B A by alpha / rank
    tensors = {
        tensor.name: np.array(tensor.data, dtype=np.float32).reshape(list(reversed(tensor.shape.tolist())))
        for tensor in reader.tensors
    }
    assert len(tensors) == 2 * len(lora_layers(model)) == 2 * 7 * 2
    heads = {"attn_q": 4, "attn_k": 2}
    for name, layer in lora_layers(model).items():
        index, projection = int(name.split(".")[2]), name.split(".")[-1]
        gguf_name = {
            "q_proj": "attn_q",
            "k_proj": "attn_k",
            "v_proj": "attn_v",
            "o_proj": "attn_output",
            "gate_proj": "ffn_gate",
            "up_proj": "ffn_up",
            "down_proj": "ffn_down",
        }[projection]
        a = torch.from_numpy(tensors[f"blk.{index}.{gguf_name}.weight.lora_a"])
        b = torch.from_numpy(tensors[f"blk.{index}.{gguf_name}.weight.lora_b"])
        assert a.shape == (lora.r, layer.in_features) and b.shape == (layer.out_features, lora.r)
        delta = alpha / lora.r * b @ a
        if model_type == "llama" and gguf_name in heads:
            delta = unpermute_rotary_rows(delta, heads[gguf_name])
        torch.testing.assert_close(delta, layer.delta(), atol=2e-4, rtol=1e-2)


def test_an_adapter_llama_cpp_cannot_apply_is_refused_in_one_line(tmp_path):
    model = random_model(tiny_config(model_type="llama"))
    save_model(model, tmp_path / "base")
    lora = LoRAConfig(r=4, trainable_tokens={"embed_tokens": (256,)})
    apply_lora(model, lora)
    save_adapter(model, tmp_path / "adapter", lora, base_model="base")
    with pytest.raises(ExportError, match="rows for tokens its base model lacks.*merged model"):
        write_gguf_adapter(tmp_path / "adapter", tmp_path / "base", tmp_path / "me.gguf", "f16", "me")
    assert not (tmp_path / "me.gguf").exists()


def test_a_base_gguf_of_another_model_is_refused_naming_the_tensor(tmp_path, qwen2_tokenizer_dir):
    from model.bpe import BPETokenizer

    tokenizer = BPETokenizer.from_dir(qwen2_tokenizer_dir)
    config = tiny_config(model_type="llama", vocab_size=tokenizer.vocab_size)
    base_and_adapter(tmp_path, config, LoRAConfig(r=4))
    for name, other in [
        ("same", config),
        ("wider", tiny_config(model_type="llama", vocab_size=tokenizer.vocab_size, intermediate_size=96)),
        ("qwen", tiny_config(model_type="qwen2", vocab_size=tokenizer.vocab_size)),
    ]:
        write_gguf(random_model(other), tokenizer, tmp_path / f"{name}.gguf", "f16", name, "")
    check_base_gguf(tmp_path / "same.gguf", tmp_path / "adapter", tmp_path / "base")
    with pytest.raises(
        ExportError, match=r"wider.gguf: not the adapter's base model .*blk.0.ffn_gate.weight has shape"
    ):
        check_base_gguf(tmp_path / "wider.gguf", tmp_path / "adapter", tmp_path / "base")
    with pytest.raises(ExportError, match="qwen.gguf: not a llama model"):
        check_base_gguf(tmp_path / "qwen.gguf", tmp_path / "adapter", tmp_path / "base")


@pytest.mark.slow  # llama.cpp loads three files
@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_llama_cpp_gives_base_plus_adapter_the_logits_of_the_merged_model(tmp_path, qwen2_tokenizer_dir, model_type):
    llama_cpp = pytest.importorskip(
        "llama_cpp",
        reason="llama-cpp-python is not installed (pip install "
        "llama-cpp-python builds llama.cpp from source, about 20 minutes)",
    )
    from model.bpe import BPETokenizer

    tokenizer = BPETokenizer.from_dir(qwen2_tokenizer_dir)
    config = tiny_config(model_type=model_type, vocab_size=tokenizer.vocab_size, rope_theta=10000.0)
    lora = LoRAConfig(r=8, alpha=16, targets=ALL_TARGETS)
    twin = merge_lora(base_and_adapter(tmp_path, config, lora))
    write_gguf(random_model(config), tokenizer, tmp_path / "base.gguf", "f16", "base", "")
    write_gguf(twin, tokenizer, tmp_path / "merged.gguf", "f16", "merged", "")
    write_gguf_adapter(tmp_path / "adapter", tmp_path / "base", tmp_path / "me.gguf", "f16", "me")

    ids = [int(i) for i in torch.randint(0, tokenizer.vocab_size, (24,), generator=torch.Generator().manual_seed(1))]

    def llama_cpp_logits(model: str, **options) -> torch.Tensor:
        llm = llama_cpp.Llama(
            model_path=str(tmp_path / model),
            n_ctx=64,
            n_threads=1,
            n_gpu_layers=0,
            logits_all=True,
            verbose=False,
            **options,
        )
        llm.eval(ids)
        return torch.tensor(np.array(llm.scores[: len(ids)]), dtype=torch.float32)

    with torch.no_grad():
        expected = twin(torch.tensor([ids]))[0].float()
    with_adapter = llama_cpp_logits("base.gguf", lora_path=str(tmp_path / "me.gguf"))
    torch.testing.assert_close(with_adapter, llama_cpp_logits("merged.gguf"), atol=2e-2, rtol=0)
    torch.testing.assert_close(with_adapter, expected, atol=2e-2, rtol=0)  # f16 rounds weights: ~0.01 (merged export)
    assert (llama_cpp_logits("base.gguf") - expected).abs().max() > 0.2  # the adapter is no rounding error's size
