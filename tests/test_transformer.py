"""The model holds to transformers' Mistral/Llama on tiny random configs."""

import pytest
import torch

import model.transformer
from model.checkpoint import load_model
from model.loss import IGNORE_INDEX, chunked_cross_entropy
from model.transformer import DocumentSpans, KVCache, ModelConfig
from tests.helpers import hf_reference, random_model, save_hf_checkpoint, tiny_config

CONFIGS = {
    "gqa": tiny_config(),
    "mha": tiny_config(num_key_value_heads=4),
    "window-shorter-than-sequence": tiny_config(sliding_window=7),
    "tied-head": tiny_config(tie_word_embeddings=True),
    "head-dim-override": tiny_config(head_dim=24),
    "vocab-32002": tiny_config(vocab_size=32002, hidden_size=32, intermediate_size=64, num_hidden_layers=1),
    "llama": tiny_config(model_type="llama", rope_theta=500000.0),
}


def reference_and_ours(tmp_path, config: ModelConfig, dtype=torch.float32, shard=False):
    hf_model = hf_reference(config)
    save_hf_checkpoint(hf_model, tmp_path, max_shard_size="200KB" if shard else "5GB")
    return hf_model, load_model(tmp_path, dtype=dtype).eval()


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("shard", [False, True], ids=["single-file", "sharded"])
def test_logits_match_transformers_fp32(tmp_path, name, shard):
    config = CONFIGS[name]
    hf_model, ours = reference_and_ours(tmp_path, config, shard=shard)
    if shard:
        assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    ids = torch.randint(0, config.vocab_size, (2, 23), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf_model(ids).logits
        got = ours(ids)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_logits_match_transformers_bf16(tmp_path):
    """In bf16 both implementations round differently; ours must be no further from the fp32 truth
    than transformers' own bf16 run is (plus a little), which is what 'as exact as the reference' means."""
    config = tiny_config(sliding_window=9)
    hf_model, ours = reference_and_ours(tmp_path, config, dtype=torch.bfloat16)
    ids = torch.randint(0, config.vocab_size, (2, 31), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        truth = hf_model(ids).logits
        hf_bf16 = hf_model.to(torch.bfloat16)(ids).logits.float()
        ours_bf16 = ours(ids).float()
    reference_error = (hf_bf16 - truth).abs().max().item()
    our_error = (ours_bf16 - truth).abs().max().item()
    assert our_error <= 1.5 * reference_error + 1e-3, (our_error, reference_error)
    assert (ours_bf16 - hf_bf16).abs().max().item() <= 2 * reference_error + 1e-3


def test_packed_rows_equal_sessions_run_alone():
    config = tiny_config(sliding_window=6)  # shorter than some sessions
    model = random_model(config)
    rows = [[5, 9, 4], [12, 1, 5]]  # session lengths, different in each row
    sessions = [[torch.randint(0, config.vocab_size, (1, n)) for n in lengths] for lengths in rows]
    input_ids = torch.cat([torch.cat(row, dim=1) for row in sessions])
    position_ids = torch.stack([torch.cat([torch.arange(n) for n in lengths]) for lengths in rows])
    document_ids = torch.stack([torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)]) for lengths in rows])
    assert DocumentSpans.of(document_ids).rows == [[(0, 5), (5, 14), (14, 18)], [(0, 12), (12, 13), (13, 18)]]
    with torch.no_grad():
        packed = model(input_ids, position_ids=position_ids, document_ids=document_ids)
        alone = torch.cat([torch.cat([model(s) for s in row], dim=1) for row in sessions])
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=0)


def packed_batch(config: ModelConfig, rows: list[list[int]]):
    """input_ids, position_ids and document_ids of rows packed from documents of these lengths."""
    input_ids = torch.randint(
        0, config.vocab_size, (len(rows), sum(rows[0])), generator=torch.Generator().manual_seed(7)
    )
    position_ids = torch.stack([torch.cat([torch.arange(n) for n in lengths]) for lengths in rows])
    document_ids = torch.stack([torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)]) for lengths in rows])
    return input_ids, position_ids, document_ids


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")  # CPU runs the reference
@pytest.mark.parametrize(
    "config",
    [
        tiny_config(sliding_window=40),  # GQA 4/2, a window shorter than most documents
        tiny_config(num_key_value_heads=4),  # no GQA, no window
        tiny_config(model_type="qwen2", sliding_window=24, max_window_layers=1),  # a full layer, then a windowed one
    ],
    ids=["gqa-window", "mha", "qwen-mixed-windows"],
)
def test_flex_attention_on_packed_rows_equals_document_by_document_with_gradients(monkeypatch, config):
    # Rows longer than FlexAttention's 128-token blocks, documents across block edges, padding last.
    rows = [[100, 40, 20], [20, 130, 10]]
    input_ids, position_ids, document_ids = packed_batch(config, rows)
    results = {}
    for devices in (set(), {"cpu"}):
        monkeypatch.setattr(model.transformer, "FLEX_ATTENTION_DEVICES", devices)
        # torch refuses FlexAttention's backward on CPU; its uncompiled reference computes it all the same.
        monkeypatch.setattr(torch.nn.attention.flex_attention, "_validate_device", lambda *tensors: None)
        ours = random_model(config).train()
        logits = ours(input_ids, position_ids=position_ids, document_ids=document_ids)
        logits.square().mean().backward()
        results[bool(devices)] = logits, {name: p.grad for name, p in ours.named_parameters()}
    (by_document, document_grads), (flex, flex_grads) = results[False], results[True]
    torch.testing.assert_close(flex, by_document, atol=1e-5, rtol=0)
    for name, grad in document_grads.items():
        torch.testing.assert_close(flex_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")  # CPU runs the reference
def test_flex_attention_path_builds_no_document_spans_on_the_host(monkeypatch):
    # Spans come from copying the ids to the host (a wait for the device on every step): where
    # FlexAttention runs, its block mask is built from the ids on the device instead.
    config = tiny_config(sliding_window=6)
    ours = random_model(config)
    input_ids, position_ids, document_ids = packed_batch(config, [[5, 9, 4], [12, 1, 5]])
    with torch.no_grad():
        expected = ours(input_ids, position_ids=position_ids, document_ids=document_ids)
        monkeypatch.setattr(model.transformer, "FLEX_ATTENTION_DEVICES", {"cpu"})
        monkeypatch.setattr(DocumentSpans, "of", None)
        got = ours(input_ids, position_ids=position_ids, document_ids=document_ids)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_decode_step_of_static_shapes_equals_the_forward_pass():
    config = tiny_config(model_type="qwen2", sliding_window=5, max_window_layers=1)
    ours = random_model(config)
    ids = torch.randint(0, config.vocab_size, (1, 12))
    with torch.no_grad():
        full = ours(ids)
        cache = KVCache(config, batch_size=1, max_len=16, dtype=torch.float32, device="cpu")
        ours(ids[:, :7], kv_cache=cache)  # prefill
        position = torch.tensor([7])
        for i in range(7, 12):
            torch.testing.assert_close(
                ours.decode_step(ids[:, i : i + 1], position, cache), full[:, i], atol=1e-5, rtol=0
            )
            position += 1


def test_kv_cache_prefill_and_decode_equal_full_forward():
    config = tiny_config(sliding_window=5)
    model = random_model(config)
    ids = torch.randint(0, config.vocab_size, (1, 12))
    with torch.no_grad():
        full = model(ids)
        cache = KVCache(config, batch_size=1, max_len=16, dtype=torch.float32, device="cpu")
        steps = [model(ids[:, :7], kv_cache=cache)]  # prefill
        steps += [model(ids[:, i : i + 1], kv_cache=cache) for i in range(7, 10)]  # decode
        steps.append(model(ids[:, 10:], kv_cache=cache))  # a chunk after decoding
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)
    assert cache.length == 12


def test_kv_cache_overflow_is_refused():
    config = tiny_config()
    model = random_model(config)
    cache = KVCache(config, batch_size=1, max_len=4, dtype=torch.float32, device="cpu")
    with pytest.raises(ValueError, match="KV cache holds 4 tokens"):
        model(torch.zeros(1, 5, dtype=torch.long), kv_cache=cache)


def test_loss_from_labels_equals_full_cross_entropy_and_its_gradient():
    config = tiny_config()
    model = random_model(config).train()
    ids = torch.randint(0, config.vocab_size, (2, 10))
    labels = ids.roll(-1, dims=1)
    labels[:, -1] = IGNORE_INDEX
    labels[0, :3] = IGNORE_INDEX
    model.activation_checkpointing = True
    chunked = chunked_cross_entropy(model.hidden_states(ids), model.lm_head, labels)
    chunked.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.activation_checkpointing = False
    logits = model(ids)
    full = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum")
    full.backward()
    torch.testing.assert_close(chunked, full, atol=1e-4, rtol=1e-5)
    for name, param in model.named_parameters():
        torch.testing.assert_close(grads[name], param.grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("tied", [False, True])
def test_loss_chunks_smaller_than_the_batch_give_the_same_sum_and_gradients(tied):
    config = tiny_config(tie_word_embeddings=tied)
    model = random_model(config)
    hidden = torch.randn(2, 9, config.hidden_size)
    labels = torch.randint(0, config.vocab_size, (2, 9))
    labels[1, 2:5] = IGNORE_INDEX
    results = []
    for chunk_tokens in (1000, 4):
        model.zero_grad()
        h = hidden.clone().requires_grad_()
        loss = chunked_cross_entropy(h, model.lm_head, labels, chunk_tokens=chunk_tokens)
        (2.5 * loss).backward()
        results.append((loss, h.grad, model.lm_head.weight.grad.clone()))
    reference = h.detach().clone().requires_grad_()
    model.zero_grad()
    expected = torch.nn.functional.cross_entropy(
        model.lm_head(reference).flatten(0, 1), labels.flatten(), reduction="sum"
    )
    (2.5 * expected).backward()
    for loss, grad_hidden, grad_weight in results:
        torch.testing.assert_close(loss, expected)
        torch.testing.assert_close(grad_hidden, reference.grad)
        torch.testing.assert_close(grad_weight, model.lm_head.weight.grad)
    with torch.no_grad():
        torch.testing.assert_close(chunked_cross_entropy(hidden, model.lm_head, labels), expected.detach())


def test_the_lm_head_gradient_stays_in_range_in_fp16():
    # 4096 tokens that all want token 3 from hidden states of 20: the unscaled sum of their gradients
    # (about -80,000) is past fp16's largest number, the gradient of the mean loss (-20) is not.
    head = torch.nn.Linear(8, 16, bias=False).half()
    hidden = torch.full((4096, 8), 20.0, dtype=torch.float16, requires_grad=True)
    labels = torch.full((4096,), 3)
    loss = chunked_cross_entropy(hidden, head, labels)
    (loss / 4096).backward()
    assert head.weight.grad.dtype == torch.float16 and torch.isfinite(head.weight.grad).all()
    assert head.weight.grad[3].float().mean().item() == pytest.approx(-20, rel=0.01)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("model_type", "gpt2", "model_type 'gpt2' is not supported"),
        ("hidden_act", "gelu", "hidden_act = 'gelu' is not supported"),
        ("rope_scaling", {"type": "linear", "factor": 2.0}, "rope_scaling"),
    ],
)
def test_unsupported_config_values_are_named(field, value, message):
    hf = tiny_config().to_hf(torch.float32)
    hf[field] = value
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_hf(hf)
