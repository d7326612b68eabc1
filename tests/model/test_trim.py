"""Vocabulary trimming on tiny random models: exactness, export round trip, generation, config ids.

Tolerance: trimmed and full fp32 log-probabilities agree to 1e-5 (observed differences are ~1e-7:
the body computes the same hidden states, only the output matmul runs on a different shape).
"""

from __future__ import annotations

import pytest
import torch
from helpers import TEXT, build_tiny_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from bcat.evaluation.generation import greedy_generate
from bcat.model.export import export_full, save_adapter, untrim_state_dict
from bcat.model.trim import (
    KeptIdsLogitsProcessor,
    TrimmedVocab,
    byte_token_ids,
    kept_token_ids,
    trim_model,
)

ATOL = 1e-5
VARIANTS = [("llama", False), ("llama", True), ("gemma3", False), ("gemma3", True), ("qwen2", False)]
TRAIN_TEXTS = TEXT[:3]  # en, fr, de: a real trim of the 600-id tiny vocabulary when no margin is kept


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """(arch, tied) -> directory of a saved tiny model; tied ones are re-saved with tied embeddings."""
    dirs = {}
    for arch, tied in VARIANTS:
        base = tmp_path_factory.mktemp(f"{arch}-{'tied' if tied else 'untied'}")
        path = build_tiny_model(base / "untied", arch=arch)
        if tied:
            model = AutoModelForCausalLM.from_pretrained(path)
            model.get_output_embeddings().weight = model.get_input_embeddings().weight
            model.config.tie_word_embeddings = True
            model.save_pretrained(base / "tied")  # stores the shared matrix once
            AutoTokenizer.from_pretrained(path).save_pretrained(base / "tied")
            path = base / "tied"
            model = AutoModelForCausalLM.from_pretrained(path)
            assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
        dirs[arch, tied] = path
    return dirs


def load(path):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path)


def trimmed_pair(path, margin=False):
    """(full model, trimmed model, vocab, tokenizer) for the training texts."""
    full, tok = load(path)
    trimmed, _ = load(path)
    kept = kept_token_ids(tok, TRAIN_TEXTS, margin=margin)
    # The tiny qwen2's tokenizer class adds <|endoftext|> (id 600) beyond the model's 600 rows.
    kept = [i for i in kept if i < full.config.vocab_size]
    vocab = trim_model(trimmed, kept)
    return full, trimmed, vocab, tok


def batch_of(tok, texts):
    tok.padding_side = "right"
    return tok(list(texts), return_tensors="pt", padding=True)


# ----------------------------------------------------------------------------- kept ids

def test_kept_ids_cover_texts_specials_and_margin(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    bare = kept_token_ids(tok, TRAIN_TEXTS, margin=False)
    with_margin = kept_token_ids(tok, TRAIN_TEXTS)
    assert bare == sorted(set(bare)) and set(bare) < set(with_margin)
    used = {i for t in TRAIN_TEXTS for i in tok(t)["input_ids"]}
    assert used <= set(bare)
    assert {tok.pad_token_id, tok.bos_token_id, tok.eos_token_id} <= set(bare)
    assert len(byte_token_ids(tok)) == 256  # byte-level BPE: its whole byte alphabet
    assert set(byte_token_ids(tok)) <= set(with_margin)
    digits = {i for d in "0123456789" for i in tok(d, add_special_tokens=False)["input_ids"]}
    assert digits <= set(with_margin)
    assert kept_token_ids(tok, [], extra_ids=[17], margin=False) == sorted({0, 1, 2, 17})


def test_kept_ids_include_chat_template_tokens(tiny_chat_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_chat_model_dir)
    kept = set(kept_token_ids(tok, ["hello"], margin=False))
    rendered = tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True)
    assert set(tok(rendered, add_special_tokens=False)["input_ids"]) <= kept


def test_kept_ids_reject_out_of_range(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    with pytest.raises(ValueError, match="outside"):
        kept_token_ids(tok, ["a"], extra_ids=[len(tok)])


# ----------------------------------------------------------------------------- id mapping

def test_vocab_mapping_roundtrip_and_errors(tmp_path):
    vocab = TrimmedVocab.from_ids([9, 3, 5, 3], old_vocab_size=12, unk_id=0)
    assert vocab.kept.tolist() == [3, 5, 9] and len(vocab) == 3
    old = torch.tensor([[3, 9, -100], [5, 5, 3]])
    new = vocab.encode_ids(old)
    assert new.tolist() == [[0, 2, -100], [1, 1, 0]]
    assert torch.equal(vocab.decode_ids(new), old)
    with pytest.raises(KeyError, match="not in the trimmed vocabulary"):
        vocab.encode_ids([4])
    assert vocab.encode_ids([4, 5], on_missing="unk") == [0, 1]
    with pytest.raises(KeyError):
        vocab.decode_ids([3])
    with pytest.raises(ValueError):
        TrimmedVocab(torch.tensor([5, 3]), 12)
    vocab.param_names = ("model.embed_tokens.weight",)
    vocab.save(tmp_path / "v.json")
    again = TrimmedVocab.load(tmp_path / "v.json")
    assert torch.equal(again.kept, vocab.kept) and again.param_names == vocab.param_names and again.unk_id == 0


# ----------------------------------------------------------------------------- exactness

@pytest.mark.parametrize("arch,tied", VARIANTS)
def test_trimmed_logprobs_equal_full_renormalised(model_dirs, arch, tied):
    """log_softmax(z')_j == z_kept[j] - logsumexp_{i in kept} z_i, at every position."""
    full, trimmed, vocab, tok = trimmed_pair(model_dirs[arch, tied])
    assert 0 < len(vocab) < vocab.old_vocab_size  # a real trim
    assert (trimmed.get_output_embeddings().weight is trimmed.get_input_embeddings().weight) == tied
    batch = batch_of(tok, TRAIN_TEXTS)
    with torch.no_grad():
        full_logits = full(**batch).logits
        trimmed_logits = trimmed(input_ids=vocab.encode_ids(batch["input_ids"]),
                                 attention_mask=batch["attention_mask"]).logits
    assert trimmed_logits.shape[-1] == len(vocab)
    expected = torch.log_softmax(full_logits[..., vocab.kept], dim=-1)
    got = torch.log_softmax(trimmed_logits, dim=-1)
    mask = batch["attention_mask"].bool()
    assert (got - expected)[mask].abs().max().item() < ATOL


@pytest.mark.parametrize("arch,tied", [("llama", False), ("gemma3", True)])
def test_trimmed_loss_equals_renormalised_nll(model_dirs, arch, tied):
    """The model's own loss reshapes logits with vocab_size: it must follow the trim."""
    full, trimmed, vocab, tok = trimmed_pair(model_dirs[arch, tied])
    batch = batch_of(tok, TRAIN_TEXTS)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    with torch.no_grad():
        loss = trimmed(input_ids=vocab.encode_ids(batch["input_ids"]), attention_mask=batch["attention_mask"],
                       labels=vocab.encode_ids(labels)).loss
        logp = torch.log_softmax(full(**batch).logits[..., vocab.kept], dim=-1)[:, :-1]
    target = vocab.encode_ids(labels)[:, 1:]
    valid = target != -100
    nll = -logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)[valid].mean()
    assert abs(loss.item() - nll.item()) < ATOL


def test_config_ids_and_sizes_remapped(model_dirs):
    _, trimmed, vocab, tok = trimmed_pair(model_dirs["gemma3", True])
    n = len(vocab)
    assert trimmed.config.vocab_size == n and trimmed.vocab_size == n and trimmed.model.vocab_size == n
    emb = trimmed.get_input_embeddings()
    assert type(emb).__name__ == "Gemma3TextScaledWordEmbedding" and emb.num_embeddings == n
    assert emb.embed_scale.item() == pytest.approx(trimmed.config.hidden_size ** 0.5)
    for config in (trimmed.config, trimmed.generation_config):
        for name, old in (("pad_token_id", tok.pad_token_id), ("bos_token_id", tok.bos_token_id),
                          ("eos_token_id", tok.eos_token_id)):
            assert vocab.decode_ids([getattr(config, name)]) == [old]
    assert emb.padding_idx == int(vocab.old_to_new[tok.pad_token_id])
    assert vocab.param_names == ("model.embed_tokens.weight", "lm_head.weight")


def test_trim_refuses_to_drop_a_config_token(model_dirs):
    model, tok = load(model_dirs["llama", False])
    kept = [i for i in kept_token_ids(tok, TRAIN_TEXTS, margin=False) if i != tok.eos_token_id]
    before = model.get_input_embeddings().weight.shape
    with pytest.raises(ValueError, match="eos_token_id"):
        trim_model(model, kept)
    assert model.get_input_embeddings().weight.shape == before  # nothing changed


# ----------------------------------------------------------------------------- export

def fake_update(model, seed=1):
    """Stand-in for training: move every parameter (body, embedding rows, head rows)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize("arch,tied", VARIANTS)
def test_export_roundtrip_is_exact(model_dirs, tmp_path, arch, tied):
    path = model_dirs[arch, tied]
    _, trimmed, vocab, tok = trimmed_pair(path)
    fake_update(trimmed)
    out = export_full(trimmed, vocab, path, tmp_path / "full")

    original, exported = load_file(path / "model.safetensors"), load_file(out / "model.safetensors")
    assert exported.keys() == original.keys()
    trained = trimmed.state_dict()
    dropped = torch.ones(vocab.old_vocab_size, dtype=torch.bool)
    dropped[vocab.kept] = False
    for key, value in exported.items():
        if key in vocab.param_names:
            assert torch.equal(value[dropped], original[key][dropped]), key  # bit-identical, untouched rows
            assert torch.equal(value[vocab.kept], trained[key]), key  # trained rows
        else:
            assert torch.equal(value, trained[key]), key  # trained body

    # Plain transformers loads it, and it computes what the trimmed model computes (renormalised).
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert reloaded.config.vocab_size == vocab.old_vocab_size
    assert (reloaded.get_output_embeddings().weight is reloaded.get_input_embeddings().weight) == tied
    batch = batch_of(tok, TRAIN_TEXTS)
    with torch.no_grad():
        expected = torch.log_softmax(trimmed(input_ids=vocab.encode_ids(batch["input_ids"]),
                                             attention_mask=batch["attention_mask"]).logits, -1)
        got = torch.log_softmax(reloaded(**batch).logits[..., vocab.kept], -1)
    assert (got - expected)[batch["attention_mask"].bool()].abs().max().item() < ATOL
    assert AutoTokenizer.from_pretrained(out)("24 mois")["input_ids"] == tok("24 mois")["input_ids"]


def test_untrim_state_dict_leaves_input_alone(model_dirs):
    full, trimmed, vocab, _ = trimmed_pair(model_dirs["llama", False])
    fake_update(trimmed)
    full_sd = {k: v.clone() for k, v in full.state_dict().items()}
    merged = untrim_state_dict(trimmed.state_dict(), vocab, full_sd)
    assert all(torch.equal(full_sd[k], v) for k, v in full.state_dict().items())  # not modified
    key = "model.embed_tokens.weight"
    assert torch.equal(merged[key][vocab.kept], trimmed.state_dict()[key])


def lora_trimmed(path):
    from peft import LoraConfig, get_peft_model

    full, trimmed, vocab, tok = trimmed_pair(path)
    peft_model = get_peft_model(trimmed, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # LoRA B starts at zero: give the adapter a non-zero effect
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    return full, peft_model, vocab, tok


def renormalised(model, batch, vocab=None):
    with torch.no_grad():
        if vocab is None:
            return torch.log_softmax(model(**batch).logits, -1)
        return torch.log_softmax(model(**batch).logits[..., vocab.kept], -1)


@pytest.mark.parametrize("arch,tied", [("llama", False), ("gemma3", True)])
def test_export_lora_merged(model_dirs, tmp_path, arch, tied):
    path = model_dirs[arch, tied]
    _, peft_model, vocab, tok = lora_trimmed(path)
    with pytest.raises(TypeError, match="merge"):
        export_full(peft_model, vocab, path, tmp_path / "x")
    batch = batch_of(tok, TRAIN_TEXTS)
    new_batch = {"input_ids": vocab.encode_ids(batch["input_ids"]), "attention_mask": batch["attention_mask"]}
    merged = peft_model.merge_and_unload()
    expected = renormalised(merged, new_batch)
    out = export_full(merged, vocab, path, tmp_path / "full")
    got = renormalised(AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval(), batch, vocab)
    assert (got - expected)[batch["attention_mask"].bool()].abs().max().item() < ATOL


def test_lora_adapter_trained_on_trimmed_model_loads_on_full_model(model_dirs, tmp_path):
    """LoRA on attention layers does not touch the vocabulary: the adapter file is vocabulary-free."""
    from peft import PeftModel

    path = model_dirs["gemma3", True]
    full, peft_model, vocab, tok = lora_trimmed(path)
    save_adapter(peft_model, vocab, tmp_path / "adapter")
    batch = batch_of(tok, TRAIN_TEXTS)
    new_batch = {"input_ids": vocab.encode_ids(batch["input_ids"]), "attention_mask": batch["attention_mask"]}
    expected = renormalised(peft_model.eval(), new_batch)
    on_full = PeftModel.from_pretrained(full, tmp_path / "adapter").eval()
    got = renormalised(on_full, batch, vocab)
    assert (got - expected)[batch["attention_mask"].bool()].abs().max().item() < ATOL


def test_trim_refuses_peft_model(model_dirs):
    _, peft_model, vocab, _ = lora_trimmed(model_dirs["llama", False])
    with pytest.raises(TypeError, match="before adding adapters"):
        trim_model(peft_model, vocab.kept)


def test_save_adapter_refuses_adapted_vocabulary_layers(model_dirs, tmp_path):
    from peft import LoraConfig, get_peft_model

    _, trimmed, vocab, _ = trimmed_pair(model_dirs["llama", False])
    peft_model = get_peft_model(trimmed, LoraConfig(r=2, target_modules=["q_proj"], modules_to_save=["lm_head"]))
    with pytest.raises(ValueError, match="vocabulary layers"):
        save_adapter(peft_model, vocab, tmp_path / "adapter")


# ----------------------------------------------------------------------------- generation

def words(text, n):
    """The first n words: a prefix whose tokens are all among the training texts' tokens."""
    return " ".join(text.split()[:n])


@pytest.mark.parametrize("arch,tied", [("llama", False), ("gemma3", True)])
def test_generation_matches_restricted_full_model(model_dirs, arch, tied):
    """Greedy: trimmed model == full model restricted to the kept ids; text decodes the same."""
    full, trimmed, vocab, tok = trimmed_pair(model_dirs[arch, tied])
    prompts = [words(TEXT[0], 4), words(TEXT[1], 7), words(TEXT[2], 2)]  # different lengths: left padding
    got = greedy_generate(trimmed, tok, prompts, vocab=vocab, max_new_tokens=12, batch_size=2)
    restrict = KeptIdsLogitsProcessor(vocab.kept)
    expected = greedy_generate(full, tok, prompts, logits_processor=[restrict], max_new_tokens=12, batch_size=2)
    assert got == expected and all(got)


def test_sampled_generation_never_emits_a_dropped_id(model_dirs):
    _, trimmed, vocab, tok = trimmed_pair(model_dirs["gemma3", True])
    ids = vocab.encode_ids(tok([words(TEXT[0], 4)] * 4, return_tensors="pt")["input_ids"])
    torch.manual_seed(0)
    out = trimmed.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=2.0,
                           max_new_tokens=40, min_new_tokens=40, pad_token_id=trimmed.generation_config.pad_token_id)
    assert int(out.max()) < len(vocab)  # the output layer has no row for a dropped id
    assert set(vocab.decode_ids(out).flatten().tolist()) <= set(vocab.kept.tolist())
    text = vocab.decode(tok, out[0])
    assert text == tok.decode(vocab.decode_ids(out[0]))
