"""NF4 weights: torchao's format bit for bit, a quantized model close to its full-precision one, loaded
layer by layer, and a linear layer that keeps no dequantized weight for its backward pass."""

import math
import weakref

import pytest
import torch
from safetensors.torch import load_file, save_file

from model.checkpoint import CheckpointError, load_model, save_model
from model.nf4 import LEVELS, QUANTIZED_WEIGHT, NF4Linear, quantize
from model.weight_files import CheckpointReader
from tests.helpers import random_model, tiny_config

# Every linear weight a whole number of torchao's scale blocks (256 x 64 values), which torchao requires.
CONFIG = tiny_config(hidden_size=128, intermediate_size=256, num_key_value_heads=4)


def torchao_nf4(weight: torch.Tensor):
    """torchao's NF4Tensor of a weight, the reference (torchao prints load errors of its CUDA kernels on import)."""
    nf4_tensor = pytest.importorskip("torchao.quantization.quantize_.workflows.nf4.nf4_tensor")
    return nf4_tensor.to_nf4(weight, block_size=64, scaler_block_size=256)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("nf4-base")
    save_model(random_model(CONFIG), path, dtype=torch.float32)
    return path


def sample_ids(seed=0):
    return torch.randint(0, CONFIG.vocab_size, (2, 24), generator=torch.Generator().manual_seed(seed))


def test_the_levels_are_torchao_s():
    reference = torchao_nf4(torch.randn(64, 256))
    assert torch.equal(torch.tensor(LEVELS), reference.nf4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(128, 128), (96, 512)])  # one scale factor; several
def test_quantize_and_dequantize_equal_torchao_s_bit_for_bit(dtype, shape):
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(0)).mul_(0.02).to(dtype)
    reference = torchao_nf4(weight)
    codes, scale_codes, scale_factors, scale_mean = quantize(weight)
    assert torch.equal(codes, reference.quantized_data)
    assert torch.equal(scale_codes, reference.quantized_scalers)
    assert torch.equal(scale_factors, reference.quantization_factor)
    assert torch.equal(scale_mean, reference.scaler_mean)
    dequantized = NF4Linear(weight).dequantize()
    assert dequantized.dtype == dtype and torch.equal(dequantized, reference.get_original_weight())


def test_any_shape_round_trips_within_half_a_level_step_and_a_block_of_zeros_stays_zeros():
    weight = torch.randn(3, 100, generator=torch.Generator().manual_seed(1))  # 300 values: no whole block at the end
    weight[1, :] = 0
    dequantized = NF4Linear(weight).dequantize()
    assert dequantized.shape == weight.shape
    assert torch.equal(dequantized[1, 28:92], torch.zeros(64))  # values 128 to 191, one block, all zero
    widest_step = max(b - a for a, b in zip(LEVELS, LEVELS[1:]))
    blocks = torch.nn.functional.pad(weight.flatten(), (0, 20)).view(-1, 64).abs().amax(1)
    bound = (blocks.repeat_interleave(64)[:300] * (widest_step / 2 + 0.01)).view(3, 100)  # 0.01: the 8-bit scale
    assert ((dequantized - weight).abs() <= bound).all()


def test_a_weight_with_nan_is_refused():
    weight = torch.randn(64, 64)
    weight[5, 7] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        quantize(weight)


def test_a_checkpoint_with_nan_in_a_linear_weight_is_named(checkpoint, tmp_path):
    state = load_file(checkpoint / "model.safetensors")
    state["model.layers.1.mlp.up_proj.weight"][0, 0] = math.nan
    (tmp_path / "bad").mkdir()
    save_file(state, tmp_path / "bad" / "model.safetensors")
    (tmp_path / "bad" / "config.json").write_bytes((checkpoint / "config.json").read_bytes())
    with pytest.raises(
        CheckpointError,
        match=r"model\.safetensors: weight model\.layers\.1\.mlp\.up_proj\.weight "
        "holds NaN",
    ):
        load_model(tmp_path / "bad", torch.float32, quantize="nf4")


def test_only_the_decoder_layers_linear_weights_are_quantized(checkpoint):
    model = load_model(checkpoint, torch.bfloat16, quantize="nf4")
    quantized = {name for name, module in model.named_modules() if isinstance(module, NF4Linear)}
    assert quantized == {
        f"model.layers.{i}.{block}.{p}_proj"
        for i in range(CONFIG.num_hidden_layers)
        for block, names in [("self_attn", "qkvo"), ("mlp", ["gate", "up", "down"])]
        for p in names
    }
    # Embeddings, norms and the LM head stay parameters in the model's dtype.
    assert {name for name, _ in model.named_parameters()} == {
        "model.embed_tokens.weight",
        "model.norm.weight",
        "lm_head.weight",
        *(
            f"model.layers.{i}.{norm}.weight"
            for i in range(CONFIG.num_hidden_layers)
            for norm in ("input_layernorm", "post_attention_layernorm")
        ),
    }
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


def test_loading_quantizes_each_weight_before_the_next_is_read(checkpoint, monkeypatch):
    """Peak memory holds one full-precision linear weight at a time, never the model whole."""
    read = CheckpointReader.read
    alive_at_each_read = []
    full_precision = []

    def recording_read(self, name, *args):
        alive_at_each_read.append(sum(ref() is not None for ref in full_precision))
        tensor = read(self, name, *args)
        if QUANTIZED_WEIGHT.fullmatch(name):
            full_precision.append(weakref.ref(tensor))
        return tensor

    monkeypatch.setattr(CheckpointReader, "read", recording_read)
    load_model(checkpoint, torch.float32, quantize="nf4")
    assert len(full_precision) == 7 * CONFIG.num_hidden_layers
    assert max(alive_at_each_read) == 0


def test_quantized_logits_are_within_tolerance_of_full_precision_and_equal_torchao_s_weights(checkpoint):
    full = load_model(checkpoint, torch.float32)
    quantized = load_model(checkpoint, torch.float32, quantize="nf4")
    with torch.no_grad():
        reference, logits = full(sample_ids()), quantized(sample_ids())
        # The full model with each linear weight replaced by torchao's NF4 round trip computes the same.
        for name, param in full.named_parameters():
            if QUANTIZED_WEIGHT.fullmatch(name):
                param.copy_(torchao_nf4(param).get_original_weight())
        torch.testing.assert_close(logits, full(sample_ids()), atol=1e-5, rtol=0)
    # 4-bit weights of std 0.05 through two layers: the logits move by a tenth of their spread or less.
    # The tolerance, for a random model whose weights are all noise, so errors of every weight add up
    # (0.245 and 73% here; a trained model's logits move far less, see the README): the logits move by
    # under 30% of their norm and mostly keep their argmax.
    assert (logits - reference).norm() / reference.norm() < 0.3
    assert (logits.argmax(-1) == reference.argmax(-1)).float().mean() > 0.6


def test_a_gaussian_weight_round_trips_within_a_tenth_of_its_spread():
    weight = torch.randn(512, 512, generator=torch.Generator().manual_seed(2)).mul_(0.02)
    error = (NF4Linear(weight).dequantize() - weight).pow(2).mean().sqrt() / weight.pow(2).mean().sqrt()
    assert 0.05 < error < 0.1  # 4 bits: about 0.09 of the spread (quantization noise, not a bug that zeroes it)


def test_no_dequantized_weight_is_kept_for_the_backward_pass_and_the_input_gradient_is_exact():
    layer = NF4Linear(torch.randn(256, 128), torch.nn.Parameter(torch.randn(256)))
    x = torch.randn(4, 128, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = layer(x)
    assert not any(t.numel() >= 256 * 128 for t in saved)
    y.backward(torch.ones_like(y))
    weight = layer.dequantize()
    torch.testing.assert_close(y, x.detach() @ weight.T + layer.bias, atol=1e-5, rtol=0)
    torch.testing.assert_close(x.grad, torch.ones(4, 256) @ weight, atol=1e-5, rtol=0)
    assert layer.bias.grad is None  # frozen with the weight


def test_a_gguf_base_is_quantized_once_loaded_from_its_own_quantization(tmp_path):
    from tests.test_gguf import write_gguf

    config = tiny_config(model_type="llama")
    path = write_gguf(tmp_path / "tiny.gguf", random_model(config), config)  # our names are Hugging Face's
    full, quantized = load_model(path, torch.float32), load_model(path, torch.float32, quantize="nf4")
    assert sum(isinstance(m, NF4Linear) for m in quantized.modules()) == 7 * config.num_hidden_layers
    with torch.no_grad():
        for name, param in full.named_parameters():
            if QUANTIZED_WEIGHT.fullmatch(name):
                param.copy_(NF4Linear(param).dequantize())
        torch.testing.assert_close(quantized(sample_ids()), full(sample_ids()), atol=1e-5, rtol=0)
