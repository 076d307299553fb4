"""harness/attention.py on CPU: sequence boundaries, the varlen kernel's two signatures, the wrapper against a
pure-torch reference kernel (layouts, boundaries, GQA, windows, scaling; through real models too), and the
up-front ConfigError. The real varlen_attn is CUDA-only: tests/test_train.py's GPU variant runs it."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from harness import attention
from harness.attention import VARLEN, cu_seqlens, kernel_args, make_forward, needs_one_row, register
from harness.config import ExperimentConfig
from harness.config.schema import ATTN_IMPLEMENTATIONS, ModelConfig
from harness.errors import ConfigError
from harness.modeling import load_model

REF = "varlen_reference"  # the wrapper over ref_varlen, registered with transformers like the real one


def ref_varlen(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
               window_size=(-1, -1), enable_gqa=False):
    """torch >= 2.12's varlen_attn, one sequence at a time with F.scaled_dot_product_attention."""
    assert torch.equal(cu_seq_q, cu_seq_k) and cu_seq_q.dtype == torch.int32
    cu = cu_seq_q.tolist()
    assert cu[0] == 0 and cu[-1] == query.shape[0] and max_q == max_k == max(b - a for a, b in zip(cu, cu[1:]))
    out = torch.empty(*query.shape[:-1], value.shape[-1], dtype=query.dtype)
    for a, b in zip(cu, cu[1:]):
        i = torch.arange(b - a)
        ok = torch.ones(b - a, b - a, dtype=torch.bool)
        if window_size[0] >= 0:
            ok &= i[:, None] - i[None, :] <= window_size[0]
        if window_size[1] >= 0:
            ok &= i[None, :] - i[:, None] <= window_size[1]
        q, k, v = (t[a:b].transpose(0, 1) for t in (query, key, value))
        out[a:b] = F.scaled_dot_product_attention(q, k, v, attn_mask=ok, scale=scale,
                                                  enable_gqa=enable_gqa).transpose(0, 1)
    return out


def ref_varlen_old(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
    """torch 2.9-2.11's signature: causal flag, no scale, no GQA, no window."""
    assert key.shape[1] == query.shape[1]
    return ref_varlen(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, window_size=(-1, 0 if is_causal else -1))


def packed(lengths: list[list[int]], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(position ids as collate lays them: each example from 0, pads 0; one segment id per example and pad)."""
    pos = torch.zeros(len(lengths), width, dtype=torch.long)
    seg = torch.arange(len(lengths) * width).view(len(lengths), width)  # pads: a segment each
    for b, row in enumerate(lengths):
        off = 0
        for n in row:
            pos[b, off:off + n] = torch.arange(n)
            seg[b, off:off + n] = -1 - 1000 * b - off
            off += n
    return pos, seg


def test_cu_seqlens_rows_padding_and_none():
    pos, _ = packed([[3, 2], [4]], 7)  # row 0: 0 1 2 0 1 pad pad; row 1: 0 1 2 3 pad pad pad
    cu, longest = cu_seqlens(pos, 2, 7, torch.device("cpu"))
    assert cu.tolist() == [0, 3, 5, 6, 7, 11, 12, 13, 14] and longest == 4 and cu.dtype == torch.int32
    cu, longest = cu_seqlens(torch.tensor([[0, 1, 2, 0, 1]]), 1, 5, torch.device("cpu"))  # one row
    assert cu.tolist() == [0, 3, 5] and longest == 3
    cu, longest = cu_seqlens(None, 2, 4, torch.device("cpu"))
    assert cu.tolist() == [0, 4, 8] and longest == 4
    cu, _ = cu_seqlens(torch.arange(4)[None], 3, 4, torch.device("cpu"))  # [1, S] for the whole batch
    assert cu.tolist() == [0, 4, 8, 12]
    cu, _ = cu_seqlens(torch.tensor([[0, 1, 2, 3, 4, 5]]), 1, 6, torch.device("cpu"))  # bucketed: pads continue
    assert cu.tolist() == [0, 6]


def test_signature_detection_and_the_kwargs_each_gets():
    calls = []

    def new(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
            window_size=(-1, -1), enable_gqa=False, seqused_k=None, block_table=None, num_splits=None):
        calls.append(dict(heads=(query.shape[1], key.shape[1]), q=query, scale=scale, window_size=window_size,
                          enable_gqa=enable_gqa, cu=cu_seq_q, max=max_q))
        return query

    def old(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
        calls.append(dict(heads=(query.shape[1], key.shape[1]), q=query, is_causal=is_causal))
        return query, None

    assert kernel_args(new) == (True, True, True, False) and kernel_args(old) == (False, False, False, True)
    assert kernel_args(attention.torch_varlen_attn) == kernel_args(new)  # torch 2.13 here
    B, H, Hk, S, D = 1, 4, 2, 6, 8
    q, k = torch.randn(B, H, S, D), torch.randn(B, Hk, S, D)
    pos = torch.tensor([[0, 1, 2, 0, 1, 2]])
    mod = SimpleNamespace(is_causal=True)
    out, w = make_forward(new, None)(mod, q, k, k, None, scaling=0.5, position_ids=pos, sliding_window=None)
    assert out.shape == (B, S, H, D) and w is None
    assert calls[-1]["heads"] == (H, Hk) and calls[-1]["enable_gqa"] and calls[-1]["scale"] == 0.5
    assert calls[-1]["window_size"] == (-1, 0)
    make_forward(new, None)(mod, q, k, k, None, position_ids=torch.arange(S)[None], sliding_window=4)
    assert calls[-1]["window_size"] == (3, 0)  # a query sees itself and 3 before it
    make_forward(new, None)(SimpleNamespace(is_causal=True, sliding_window=4), q, k, k, None,
                            position_ids=pos)  # module's window, but sequences of 3 never reach it
    assert calls[-1]["window_size"] == (-1, 0)
    make_forward(old, None)(mod, q, k, k, None, scaling=0.5, position_ids=pos)
    assert calls[-1]["heads"] == (H, H) and calls[-1]["is_causal"] is True
    assert torch.allclose(calls[-1]["q"], q.transpose(1, 2).reshape(S, H, D) * 0.5 * D ** 0.5)  # pre-scaled
    with pytest.raises(ValueError, match="sliding window"):
        make_forward(old, None)(mod, q, k, k, None, position_ids=torch.arange(S)[None], sliding_window=4)
    with pytest.raises(ValueError, match="float16"):  # the real kernel's dtypes, fp32 without autocast
        make_forward(new)(mod, q, k, k, None, position_ids=pos)
    with pytest.raises(ValueError, match="attention dropout"):
        make_forward(new, None)(mod, q, k, k, None, dropout=0.1, position_ids=pos)
    cu = torch.tensor([0, 2, 6])
    make_forward(new, None)(mod, q, k, k, None, position_ids=pos, cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                            max_length_q=4, max_length_k=4)
    assert calls[-1]["cu"].tolist() == [0, 2, 6] and calls[-1]["cu"].dtype == torch.int32
    assert calls[-1]["max"] == 4  # given boundaries win over position ids


@pytest.mark.parametrize("kernel,window", [(ref_varlen, None), (ref_varlen, 3), (ref_varlen_old, None)])
def test_wrapper_equals_block_diagonal_sdpa(kernel, window):
    """Several packed rows with padding, GQA, a custom scale: the wrapper over a reference kernel gives what
    sdpa gives with the block-diagonal causal (windowed) mask. (The old signature has no window: its error is
    checked above.)"""
    torch.manual_seed(0)
    B, H, Hk, S, D, scaling = 2, 4, 2, 11, 8, 0.3
    pos, seg = packed([[4, 5, 2], [7, 1]], S)
    q, k, v = torch.randn(B, H, S, D), torch.randn(B, Hk, S, D), torch.randn(B, Hk, S, D)
    out, _ = make_forward(kernel, None)(SimpleNamespace(is_causal=True), q, k, v, None, scaling=scaling,
                                        position_ids=pos, sliding_window=window)
    i = torch.arange(S)
    ok = (seg[:, :, None] == seg[:, None, :]) & (i[None, :, None] >= i[None, None, :])
    if window is not None:
        ok &= i[None, :, None] - i[None, None, :] < window
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=ok[:, None], scale=scaling, enable_gqa=True)
    assert (out - want.transpose(1, 2)).abs().max() < 1e-5


def _model_dir(tmp_path, kind: str):
    from transformers import AutoModelForCausalLM, Gemma3TextConfig, LlamaConfig

    common = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    cfg = (LlamaConfig(**common) if kind == "llama" else  # Gemma-3: a sliding-window layer and a full one
           Gemma3TextConfig(**common, head_dim=8, sliding_window=4,
                            layer_types=["sliding_attention", "full_attention"]))
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / kind)
    return tmp_path / kind


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_registered_wrapper_isolates_packed_rows_in_a_model(tmp_path, kind):
    """Through from_pretrained(attn_implementation=...): packed rows (several, padded; Gemma-3's sliding layers
    with sequences past the window) give each example's logits alone, as sdpa does; a padding mask and the KV
    cache hand over to sdpa (same logits, same greedy generation)."""
    from transformers import AutoModelForCausalLM

    register(REF, ref_varlen, dtypes=None)
    path = _model_dir(tmp_path, kind)
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64, attn_implementation=REF).eval()
    sdpa = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64, attn_implementation="sdpa").eval()
    lengths = [[6, 9, 3], [10, 5]]
    pos, _ = packed(lengths, 20)
    ids = torch.randint(3, 97, pos.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = ref(input_ids=ids, position_ids=pos, use_cache=False).logits
        assert (got - sdpa(input_ids=ids, position_ids=pos, use_cache=False).logits).abs().max() < 1e-10
        for b, row in enumerate(lengths):
            off = 0
            for n in row:
                alone = sdpa(input_ids=ids[b:b + 1, off:off + n]).logits[0]
                assert (got[b, off:off + n] - alone).abs().max() < 1e-10, (b, off)
                off += n
        mask = torch.ones_like(ids)
        mask[0, :4] = 0  # left padding: the sdpa hand-over
        assert (ref(input_ids=ids, attention_mask=mask).logits - sdpa(input_ids=ids, attention_mask=mask).logits
                ).abs().max() < 1e-10
        gen = dict(max_new_tokens=4, do_sample=False)
        assert torch.equal(ref.generate(ids[:1, :8], **gen), sdpa.generate(ids[:1, :8], **gen))


def test_config_error_up_front_and_the_one_row_rule(tmp_path, monkeypatch):
    assert [a for a in ATTN_IMPLEMENTATIONS if needs_one_row(a)] == ["flash_attention_2"]
    assert attention.kernel_unavailable("flex_attention", "cpu") is None  # runs on CPU (compiled)
    assert "CUDA-only" in attention.kernel_unavailable(VARLEN, "cpu")
    path = _model_dir(tmp_path, "llama")
    cfg = dataclasses.replace(ExperimentConfig(), model=ModelConfig(name_or_path=str(path),
                                                                    attn_implementation=VARLEN))
    with pytest.raises(ConfigError, match="CUDA-only") as err:
        load_model(cfg, path, torch.device("cpu"), training=True)
    assert err.value.where == "model.attn_implementation" and "sdpa" in err.value.fix
    model = load_model(cfg, path, torch.device("cpu"), training=False)  # evaluation: sdpa, any device
    assert model.config._attn_implementation == "sdpa"
    monkeypatch.setattr(attention, "kernel_unavailable", lambda name, device: None)  # as on a GPU
    attention.check_kernel(VARLEN, "cuda", torch.float32, autocast=True)
    with pytest.raises(ConfigError, match="float16") as err:
        attention.check_kernel(VARLEN, "cuda", torch.float32, autocast=False)
    assert err.value.where == "model.dtype"
    with pytest.raises(ConfigError) as err:
        attention.check_kernel(VARLEN, "cuda", torch.bfloat16, dropout=0.1)
    assert err.value.where == "train.dropout"
