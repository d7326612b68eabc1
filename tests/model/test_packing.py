"""The prompt-shared preference forward (``prompt | chosen | rejected`` in one row, 4D mask) is exact.

Packed vs plain, fp32, tolerance 1e-5, on tiny random Llama, Qwen2 and Gemma 3 (with sliding-window
and full-attention layers, a window shorter than the rows), sdpa and eager attention, padded
batches with different prompt and answer lengths (rejected longer and shorter than chosen):
per-token log-probs, summed and mean completion log-probs, pooled hidden states of the chosen rows;
then the whole ``compute_loss`` (DPO, ORPO, alignment terms on) and its gradients; and the
fallback when a model does not honour the mask.
"""

from __future__ import annotations

import logging

import pytest
import torch
from helpers import build_tiny_model, parallel_records
from transformers import AutoModelForCausalLM, AutoTokenizer

import bcat.model.forward as forward
from bcat.batching.collate import GroupCollator
from bcat.config import AlignmentConfig, ObjectiveConfig
from bcat.data.records import Record
from bcat.data.tokenization import Example, tokenize_records
from bcat.model.forward import (
    PolicyForward,
    check_packed_forward,
    check_selective_head,
    describe_forward_path,
    exactness_tolerance,
    forward_path,
    packed_inputs,
    sequence_logps,
)
from bcat.training.objectives import compute_loss, reference_logps

TOL = 1e-5
GEMMA_LAYERS = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]


@pytest.fixture(scope="module")
def model_dirs(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("archs")
    return {"llama": tiny_model_dir,
            "qwen2": build_tiny_model(root / "qwen2", arch="qwen2", layers=3),
            "gemma3": build_tiny_model(root / "gemma3", arch="gemma3", layers=4)}


def _load(model_dirs, arch: str, impl: str):
    extra = {"layer_types": GEMMA_LAYERS, "sliding_window": 9} if arch == "gemma3" else {}
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(model_dirs[arch], attn_implementation=impl, **extra).eval()


SHAPES = [(12, 3, 7), (5, 6, 2), (17, 1, 4), (8, 4, 4)]
"""(prompt, chosen, rejected) lengths: one pair per packed row, padded."""
CHAT_SHAPES = [(3, 20, 9), (2, 4, 11), (4, 6, 2), (3, 2, 14)]
"""Short prompts, answers of different lengths: pairs 1 and 2 share a row, 3 fills one, 0 the widest."""


def _examples(seed: int = 0, n: int = 4, shapes=SHAPES) -> list[Example]:
    """Pairs with different prompt lengths, rejected longer and shorter than chosen; BOS first."""
    gen = torch.Generator().manual_seed(seed)

    def ids(k):
        return torch.randint(3, 500, (k,), generator=gen).tolist()

    return [Example(i, f"g{i // 2}", ("en", "fr")[i % 2], [1] + ids(p), (ids(c) + [2], ids(r) + [2]))
            for i, (p, c, r) in enumerate(shapes[:n])]


def _both(policy, batch, **kw):
    plain = policy(batch["input_ids"], batch["attention_mask"], batch["target_mask"], pool_mask=batch["pool_mask"], **kw)
    packed = policy(batch["input_ids"], batch["attention_mask"], batch["target_mask"], pool_mask=batch["pool_mask"],
                    packed=packed_inputs(batch), **kw)
    return plain, packed


def test_chat_shaped_pairs_share_rows():
    batch = GroupCollator(pad_token_id=0, anchor="en", pack=True)(_examples(shapes=CHAT_SHAPES))
    rows = [sorted(set(r.tolist()) - {-1}) for r in batch["packed_pairs"]]
    assert rows == [[0], [3], [1, 2]]
    # sequences of 35, 20, 15 and 22 tokens in rows of 35: 13 padding slots, against 92 in the 8 plain rows of 25
    assert (batch["packed_pairs"] == -1).sum() == 13 and (batch["attention_mask"] == 0).sum() == 92


@pytest.mark.parametrize("shapes", [SHAPES, CHAT_SHAPES], ids=["rag", "chat"])
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_packed_forward_equals_plain(model_dirs, arch, impl, shapes):
    model = _load(model_dirs, arch, impl)
    policy = PolicyForward(model)
    batch = GroupCollator(pad_token_id=0, anchor="en", bos_token_id=1, pack=True)(_examples(shapes=shapes))
    # The packed rows are shorter than two plain rows: the prompt is there once.
    assert batch["packed_input_ids"].numel() < batch["input_ids"].numel()
    layers = tuple(range(model.config.num_hidden_layers + 1))
    with torch.no_grad():
        plain, packed = _both(policy, batch, hidden_layers=layers, pool_rows=4)
    mask = batch["target_mask"]
    assert (plain["token_logps"] - packed["token_logps"]).abs().max() < TOL
    assert (packed["token_logps"][~mask] == 0).all()
    # A row's sum and mean can differ by at most its tokens' differences: TOL per scored token (a sum
    # over a chat answer's ~145 tokens is in the hundreds, where an fp32 ulp is 3e-5 or more).
    summed_plain, mean_plain = sequence_logps(plain["token_logps"], mask)
    summed_packed, mean_packed = sequence_logps(packed["token_logps"], mask)
    assert ((summed_plain - summed_packed).abs() <= TOL * mask.sum(-1)).all()
    assert (mean_plain - mean_packed).abs().max() < TOL
    assert plain["pooled"].shape == packed["pooled"].shape == (len(layers), 4, model.config.hidden_size)
    assert (plain["pooled"] - packed["pooled"]).abs().max() < TOL
    assert check_packed_forward(policy, 500, torch.device("cpu"), 1, hidden_layers=(1,))


def test_gemma3_window_is_honoured(model_dirs):
    """The test above is meaningful for Gemma 3: its window really cuts these rows."""
    model = _load(model_dirs, "gemma3", "sdpa")
    batch = GroupCollator(pad_token_id=0, anchor="en", pack=True)(_examples())
    policy = PolicyForward(model)
    with torch.no_grad():
        narrow = policy(batch["input_ids"], batch["attention_mask"], batch["target_mask"])["token_logps"]
        model.config.sliding_window = 4096
        wide = policy(batch["input_ids"], batch["attention_mask"], batch["target_mask"])["token_logps"]
    assert (narrow - wide).abs().max() > 1e-3


def test_full_logits_fallback_path_also_packs(model_dirs):
    policy = PolicyForward(_load(model_dirs, "llama", "sdpa"))
    policy.selective_head = False
    batch = GroupCollator(pad_token_id=0, anchor="en", pack=True)(_examples())
    with torch.no_grad():
        plain, packed = _both(policy, batch, return_full=True)
    assert (plain["token_logps"] - packed["token_logps"]).abs().max() < TOL
    assert (plain["scored_logps"] - packed["scored_logps"]).abs().max() < TOL


def test_rejected_never_sees_chosen(model_dirs):
    """Changing a chosen answer moves nothing of its rejected answer (bit for bit)."""
    policy = PolicyForward(_load(model_dirs, "qwen2", "sdpa"))
    collator = GroupCollator(pad_token_id=0, anchor="en", pack=True)
    a = _examples()
    b = [Example(e.index, e.group, e.lang, e.prompt_ids, ([7] * len(e.completions[0]), e.completions[1])) for e in a]
    with torch.no_grad():
        out = [policy(x["input_ids"], x["attention_mask"], x["target_mask"], packed=packed_inputs(x))["token_logps"]
               for x in (collator(a), collator(b))]
    assert torch.equal(out[0][4:], out[1][4:])
    assert not torch.equal(out[0][:4], out[1][:4])


# ------------------------------------------------------------------------------- compute_loss


@pytest.fixture(scope="module")
def real_batches(tiny_model_dir):
    """Real tokenized parallel data (2 groups x 3 languages), plain and packed collations."""
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    recs = parallel_records(2, langs=("en", "fr", "de"))
    recs[1]["rejected"] = " 50 mois, ou 60 mois, ou plus"  # a rejected answer longer than its chosen one
    recs[4]["prompt"] = "Short? Answer:"  # a short prompt: uneven padding
    records = [Record(r["group"], r["lang"], r["prompt"], (r["chosen"], r["rejected"])) for r in recs]
    examples = tokenize_records(records, tok, max_length=512)
    packed = GroupCollator(tok.pad_token_id, "en", tok.bos_token_id, pack=True)(examples)
    plain = GroupCollator(tok.pad_token_id, "en", tok.bos_token_id)(examples)
    assert "packed_input_ids" not in plain
    return plain, packed


ALIGN_ON = AlignmentConfig(hidden_weight=0.3, output_weight=0.1, token_kl_weight=0.1)
STATS = (torch.linspace(-0.1, 0.1, 192).repeat(2, 1), torch.linspace(0.5, 2.0, 192).repeat(2, 1))
"""A fixed (mean, scale) per layer for the tiny model's 192-wide states."""


@pytest.mark.parametrize("objective", [
    ObjectiveConfig(name="dpo"),
    ObjectiveConfig(name="orpo"),
    ObjectiveConfig(name="orpo", orpo_nll_on_prompt=True),
], ids=["dpo", "orpo", "orpo-nll-on-prompt"])
def test_compute_loss_packed_equals_plain(tiny_model_dir, real_batches, objective):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # move off the saved weights so the policy differs from the reference
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    ref_model = PolicyForward(AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval())
    policy = PolicyForward(model)
    results = []
    for batch in real_batches:
        model.zero_grad()
        out = compute_loss(policy, batch, objective, ALIGN_ON, hidden_layers=(1, 2),
                           reference=lambda b: reference_logps(ref_model, b), standardization=STATS)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((out, grads))
    (plain, g_plain), (packed, g_packed) = results
    assert {"main", "hidden", "output", "token_kl"} <= set(plain.terms)
    assert plain.terms.keys() == packed.terms.keys()
    for k in plain.terms:
        assert abs(plain.terms[k] - packed.terms[k]) < TOL, k
    assert (plain.per_example - packed.per_example).abs().max() < TOL
    assert g_plain.keys() == g_packed.keys()
    assert max((g_plain[k] - g_packed[k]).abs().max().item() for k in g_plain) < 1e-4


def test_reference_logps_packed_equals_plain(tiny_model_dir, real_batches):
    policy = PolicyForward(AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval())
    plain, packed = (reference_logps(policy, b) for b in real_batches)
    assert (plain - packed).abs().max() < TOL


# ----------------------------------------------------------------------------------- fallback


def test_fallback_when_the_mask_is_not_honoured(model_dirs, monkeypatch, caplog):
    policy = PolicyForward(_load(model_dirs, "llama", "sdpa"))
    real = forward.packed_attention_mask

    def leaky(pairs, segments, position_ids, config, dtype):  # a model that lets rejected tokens see chosen ones
        return real(pairs, segments.masked_fill(segments == 1, 0), position_ids, config, dtype)

    monkeypatch.setattr(forward, "packed_attention_mask", leaky)
    with caplog.at_level(logging.WARNING, logger="bcat.model.forward"):
        assert not check_packed_forward(policy, 500, torch.device("cpu"))
    assert not policy.packed_ok
    assert sum("prompt-shared attention mask" in r.message for r in caplog.records) == 1


def test_fallback_for_an_attention_without_4d_masks(model_dirs, caplog):
    model = _load(model_dirs, "llama", "sdpa")
    model.config._attn_implementation = "flash_attention_2"  # varlen: cannot hide chosen from rejected
    with caplog.at_level(logging.WARNING, logger="bcat.model.forward"):
        assert not check_packed_forward(PolicyForward(model), 500, torch.device("cpu"))
    assert "flash_attention_2" in caplog.text


def test_flex_attention_takes_the_packed_layout_exactly(model_dirs):
    """The block mask (compiled flex attention, on the CPU too) passes the same start-up check as the dense mask:
    packed equals plain, and nothing leaks from chosen to rejected. One architecture here (each compile costs
    about a minute on a small CPU); Gemma 3's pair of block masks is checked on the GPU (tests/gpu)."""
    policy = PolicyForward(_load(model_dirs, "llama", "flex_attention"))
    assert check_packed_forward(policy, 500, torch.device("cpu"), 1, (1, 2)), policy.checks


def test_mistral_style_window_on_every_layer():
    """A window and no ``layer_types`` (Mistral): every layer is windowed, one 4D mask."""
    from transformers import AutoConfig

    config = AutoConfig.for_model("mistral", vocab_size=500, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, sliding_window=5, pad_token_id=0)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    assert getattr(model.config, "layer_types", None) is None
    batch = GroupCollator(pad_token_id=0, anchor="en", pack=True)(_examples())
    with torch.no_grad():
        plain, packed = _both(PolicyForward(model), batch)
    assert (plain["token_logps"] - packed["token_logps"]).abs().max() < TOL


# ----------------------------------------------------------------------------- bf16 / fp16 and the record


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_start_up_checks_pass_in_half_precision(model_dirs, arch, dtype, caplog):
    """The exactness checks keep the fast paths on a model loaded in bf16 / fp16 (tolerances scale with the dtype)."""
    extra = {"layer_types": GEMMA_LAYERS, "sliding_window": 9} if arch == "gemma3" else {}
    model = AutoModelForCausalLM.from_pretrained(model_dirs[arch], dtype=dtype, attn_implementation="sdpa", **extra)
    policy = PolicyForward(model)
    vocab = model.get_input_embeddings().num_embeddings
    with caplog.at_level(logging.WARNING, logger="bcat.model.forward"):
        assert check_selective_head(policy, vocab, torch.device("cpu"))
        assert check_packed_forward(policy, vocab, torch.device("cpu"), 1, (1, 2))
    assert policy.checks == {} and not caplog.records
    assert forward_path(policy, True) == {"packed": True, "head_at_scored_positions": True}


def test_exactness_tolerance():
    assert exactness_tolerance(torch.float32, torch.tensor([-12.0, 3.0])) == 1e-4
    # bf16: 8 rounding steps (eps 2^-7) of the largest magnitude, 12
    assert exactness_tolerance(torch.bfloat16, torch.tensor([-12.0, 3.0])) == pytest.approx(8 * 2 ** -7 * 12)
    assert exactness_tolerance(torch.float16, torch.tensor([0.5])) == pytest.approx(8 * 2 ** -10)
    # log-probs of logits near 120: 32 fp32 ulps of the largest logit
    logits = torch.tensor([[120.0, -3.0]])
    assert exactness_tolerance(torch.float32, torch.tensor([-12.0]), logits) == pytest.approx(32 * 2 ** -23 * 120)
    assert exactness_tolerance(torch.float32, torch.tensor([-12.0]), logits / 100) == 1e-4  # small logits: the floor


def test_rounding_of_large_logits_is_not_a_mismatch(model_dirs, monkeypatch):
    """A head off by a few fp32 ulps of its logits passes: a log-prob's rounding follows the logits' size
    (the built-in model's random-id logits reach 120, where two matmul shapes differ by 8 ulps), and a
    tolerance scaled by the log-probs alone refused such heads now and then."""
    model = AutoModelForCausalLM.from_pretrained(model_dirs["llama"], dtype=torch.float32)
    with torch.no_grad():
        model.lm_head.weight.mul_(3000)  # logits in the thousands
    policy = PolicyForward(model)
    ulps = 8 * torch.finfo(torch.float32).eps
    monkeypatch.setattr(forward, "_softcap", lambda logits, config: logits * (1 + ulps))
    ids = torch.randint(0, 500, (2, 12), generator=torch.Generator().manual_seed(0))  # the check's ids
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, :-1]
        reference = logits.log_softmax(-1).gather(-1, ids[:, 1:, None])
        ours = (logits * (1 + ulps)).log_softmax(-1).gather(-1, ids[:, 1:, None])
    assert (ours - reference).abs().max() > exactness_tolerance(torch.float32, reference)  # the old rule refuses
    assert check_selective_head(policy, 500, torch.device("cpu")) and policy.checks == {}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_a_head_that_is_not_reproduced_is_refused_with_its_reason(model_dirs, monkeypatch, caplog, dtype):
    model = AutoModelForCausalLM.from_pretrained(model_dirs["llama"], dtype=dtype)
    with torch.no_grad():
        model.lm_head.weight.mul_(100)  # logits of a trained model's size (units to tens), not a random one's
    policy = PolicyForward(model)
    monkeypatch.setattr(forward, "_softcap", lambda logits, config: 1.5 * logits)  # a head we would get wrong
    with caplog.at_level(logging.WARNING, logger="bcat.model.forward"):
        assert not check_selective_head(policy, 500, torch.device("cpu"))
    assert "max log-prob difference" in caplog.text and "tolerance" in caplog.text
    path = forward_path(policy, False)
    assert path["head_at_scored_positions"] is False and "max log-prob difference" in path["head_reason"]
    assert "every position" in describe_forward_path(path)


def test_a_refused_packing_is_recorded_with_its_reason(model_dirs, monkeypatch):
    policy = PolicyForward(_load(model_dirs, "llama", "sdpa"))
    real = forward.packed_attention_mask
    monkeypatch.setattr(forward, "packed_attention_mask",
                        lambda pr, s, p, c, d: real(pr, s.masked_fill(s == 1, 0), p, c, d))  # rejected sees chosen
    assert not check_packed_forward(policy, 500, torch.device("cpu"))
    path = forward_path(policy, True)
    assert path["packed"] is False and "chosen->rejected leak" in path["packed_reason"]
    assert describe_forward_path(path).startswith("plain rows (packing failed its start-up check)")
