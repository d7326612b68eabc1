"""Parity with TRL 1.x: with every alignment term off, bcat's DPO and ORPO losses are TRL's.

What is compared, on one tiny random Llama and one batch of 3 preference pairs (different prompt
lengths, and one rejected answer longer than its chosen one, so padding is exercised):

- **Token ids.** bcat's ``tokenize_records`` gives the same prompt / chosen / rejected ids as
  ``DPOTrainer``'s and ``ORPOTrainer``'s own preprocessing for these plain-string records.
- **Batch layout.** ``GroupCollator`` fed TRL's ids gives TRL's ``input_ids`` and
  ``attention_mask`` (right padding, ``[chosen_1..N; rejected_1..N]``), and bcat's
  ``target_mask`` is TRL's ``completion_mask`` shifted by one (DPO) / TRL's ``labels != -100``
  shifted by one (ORPO).
- **DPO** (``loss_type="sigmoid"``), beta 0.1 with TRL's precomputed reference log-probs and beta
  0.5 with a live frozen ``ref_model``: per-pair summed reference and policy log-probs, the loss
  of ``DPOTrainer.compute_loss``, its logged metrics, and the gradients of the loss.
- **ORPO** (``trl.experimental.orpo``), lambda (TRL's ``beta``) 0.1 and 0.5: per-pair averaged
  log-probs, the NLL, the mean log-odds, the loss of ``get_batch_loss_metrics`` and its gradients.
  TRL 1.16's ORPO NLL is a token-level mean over the WHOLE chosen sequence (labels are
  ``input_ids`` wherever ``attention_mask == 1``, prompt included), which is
  ``orpo_nll_on_prompt=True``; bcat's default (``False``, completion-only NLL as in LLaMA-Factory)
  is checked against TRL's own pieces with the NLL restricted to TRL's completion labels.

The losses are compared on IDENTICAL token ids (bcat's collator is fed TRL's tokenized rows), so a
tokenization difference cannot hide a loss difference; the tokenization itself is compared
separately.

Known tokenization difference (documented by ``test_tokenization_boundary_inside_a_token``): bcat
tokenizes prompt and completion separately and concatenates them, so the prompt is always exactly
``tokenizer(prompt)``. TRL's DPO tokenizes ``prompt + completion + eos_token`` as one string and
starts the completion where it diverges from ``tokenizer(prompt)``; TRL's ORPO also tokenizes
jointly and moves the boundary one token left on a merge. When a BPE merge spans the boundary
(a prompt ending in a space, a word split between prompt and answer), TRL's sequence is the joint
tokenization and part of the prompt is scored as completion, while bcat's sequence is the two
separate tokenizations. When the completion starts at a pre-tokenizer boundary (e.g. a leading
space, as in the data below), all three agree. EOS: bcat appends the EOS id; TRL DPO appends the
EOS string before tokenizing and ORPO the id, which give the same id here.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import parallel_records
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

from bcat.batching.collate import GroupCollator
from bcat.config import AlignmentConfig, ObjectiveConfig
from bcat.data.records import Record
from bcat.data.tokenization import Example, tokenize_records
from bcat.model.forward import PolicyForward, sequence_logps
from bcat.training.objectives import compute_loss, reference_logps

pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

# TRL's internals still call the deprecated transformers name; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

TOL = 1e-5
ALIGN_OFF = AlignmentConfig(hidden_weight=0.0, output_weight=0.0, token_kl_weight=0.0)


# ------------------------------------------------------------------------------------ fixtures


def _records() -> list[dict]:
    recs = parallel_records(1, langs=("en", "fr", "de"))
    recs[1]["rejected"] = " 50 mois, ou 60 mois"  # longer than its chosen answer: uneven padding
    return recs


def _dataset():
    return datasets.Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in _records()])


def _bcat_examples(prompts, chosens, rejecteds) -> list[Example]:
    recs = _records()
    return [Example(i, r["group"], r["lang"], list(p), (list(c), list(j)))
            for i, (r, p, c, j) in enumerate(zip(recs, prompts, chosens, rejecteds))]


def _perturbed(model_dir, seed: int):
    """The tiny model with its weights moved off the saved ones, so the policy differs from the reference."""
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model.eval()


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


# TRL's configs turn checkpointing on by default. Within bcat's transformers range the switch is named
# `activation_checkpointing` in the newer releases and `gradient_checkpointing` in the older ones.
CHECKPOINTING = "activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__ \
    else "gradient_checkpointing"


def _common_args(tmp_path_factory, **kw) -> dict:
    return dict(output_dir=str(tmp_path_factory.mktemp("trl")), report_to=[], bf16=False, fp16=False,
                use_cpu=True, disable_dropout=True, **{CHECKPOINTING: False}, **kw)


@pytest.fixture(scope="module", params=[(0.1, True), (0.5, False)], ids=["beta0.1-precomputed", "beta0.5-live-ref"])
def dpo(request, tiny_model_dir, tok, tmp_path_factory):
    """A DPOTrainer, the collated TRL batch, and bcat's batch built from TRL's token ids."""
    from trl import DPOConfig, DPOTrainer

    beta, precompute = request.param
    args = DPOConfig(**_common_args(tmp_path_factory, beta=beta, precompute_ref_log_probs=precompute,
                                    max_length=None, loss_type=["sigmoid"], per_device_train_batch_size=3))
    ref_model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    trainer = DPOTrainer(model=_perturbed(tiny_model_dir, seed=1), ref_model=ref_model, args=args,
                         train_dataset=_dataset(), processing_class=tok)
    rows = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
    trl_batch = trainer.data_collator(rows)
    examples = _bcat_examples([r["prompt_ids"] for r in rows], [r["chosen_ids"] for r in rows],
                              [r["rejected_ids"] for r in rows])
    batch = GroupCollator(pad_token_id=tok.pad_token_id, anchor="en")(examples)
    return trainer, rows, trl_batch, batch, ref_model, beta


@pytest.fixture(scope="module", params=[0.1, 0.5], ids=lambda lam: f"lambda{lam}")
def orpo(request, tiny_model_dir, tok, tmp_path_factory):
    """An ORPOTrainer, the collated TRL batch, and bcat's batch built from TRL's token ids."""
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    lam = request.param
    args = ORPOConfig(**_common_args(tmp_path_factory, beta=lam, max_length=512, remove_unused_columns=False,
                                     per_device_train_batch_size=3))
    trainer = ORPOTrainer(model=_perturbed(tiny_model_dir, seed=2), args=args, train_dataset=_dataset(),
                          processing_class=tok)
    rows = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
    trl_batch = trainer.data_collator(rows)
    prompts, chosens, rejecteds = [], [], []
    for r in rows:
        n_prompt = sum(label == -100 for label in r["chosen_labels"])
        assert r["rejected_input_ids"][:n_prompt] == r["chosen_input_ids"][:n_prompt]
        prompts.append(r["chosen_input_ids"][:n_prompt])
        chosens.append(r["chosen_input_ids"][n_prompt:])
        rejecteds.append(r["rejected_input_ids"][n_prompt:])
    batch = GroupCollator(pad_token_id=tok.pad_token_id, anchor="en")(_bcat_examples(prompts, chosens, rejecteds))
    return trainer, rows, trl_batch, batch, lam, (prompts, chosens, rejecteds)


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _max_grad_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys() and a
    return max((a[k] - b[k]).abs().max().item() for k in a)


# -------------------------------------------------------------------------------- tokenization


def _bcat_tokenized(tok):
    recs = [Record(r["group"], r["lang"], r["prompt"], (r["chosen"], r["rejected"])) for r in _records()]
    return tokenize_records(recs, tok, max_length=512)


def test_tokenization_matches_trl_dpo(dpo, tok):
    _, rows, *_ = dpo
    ours = _bcat_tokenized(tok)
    for ex, row in zip(ours, rows, strict=True):
        assert ex.prompt_ids == row["prompt_ids"]
        assert ex.completions == (row["chosen_ids"], row["rejected_ids"])
        assert ex.completions[0][-1] == tok.eos_token_id


def test_tokenization_matches_trl_orpo(orpo, tok):
    *_, (prompts, chosens, rejecteds) = orpo
    ours = _bcat_tokenized(tok)
    assert [ex.prompt_ids for ex in ours] == prompts
    assert [ex.completions for ex in ours] == [(c, j) for c, j in zip(chosens, rejecteds)]


def test_tokenization_boundary_inside_a_token(dpo, tok):
    """The one documented difference: a BPE merge across the prompt/completion boundary.

    bcat keeps ``tokenizer(prompt)`` intact; TRL DPO scores the joint tokenization and moves the
    boundary back to where it diverges from the prompt alone.
    """
    trainer = dpo[0]
    prompt, chosen = "Question: How long? Answer: ", "24 months"  # "Ġ" + "24" merge into "Ġ24" jointly
    ds = datasets.Dataset.from_list([{"prompt": prompt, "chosen": chosen, "rejected": "50 months"}])
    row = trainer._prepare_dataset(ds, tok, trainer.args, "probe")[0]
    ex = tokenize_records([Record("g", "en", prompt, (chosen, "50 months"))], tok, max_length=512)[0]
    joint = tok(prompt + chosen + tok.eos_token)["input_ids"]
    if ex.prompt_ids + ex.completions[0] == joint:
        pytest.skip("this tokenizer does not merge across the boundary")
    assert ex.prompt_ids == tok(prompt)["input_ids"]  # bcat: prompt exactly as at inference
    assert row["prompt_ids"] + row["chosen_ids"] == joint  # TRL: the joint tokenization
    assert row["prompt_ids"] == ex.prompt_ids[: len(row["prompt_ids"])]
    assert len(row["prompt_ids"]) < len(ex.prompt_ids)  # TRL scores the prompt's tail as completion


# ------------------------------------------------------------------------------------------ DPO


def test_dpo_batch_layout_matches_trl(dpo):
    _, _, trl_batch, batch, *_ = dpo
    assert torch.equal(batch["input_ids"], trl_batch["input_ids"])
    assert torch.equal(batch["attention_mask"], trl_batch["attention_mask"])
    assert torch.equal(batch["target_mask"], trl_batch["completion_mask"][:, 1:].bool())


def test_dpo_loss_logps_and_grads_match_trl(dpo):
    trainer, _, trl_batch, batch, ref_model, beta = dpo
    model = trainer.model
    n = len(batch["langs"])
    objective = ObjectiveConfig(name="dpo", beta=beta)

    # Reference: bcat's reference_logps on the frozen model vs TRL's (precomputed, or its live ref_model).
    ref = reference_logps(PolicyForward(ref_model), batch)
    if trainer.precompute_ref_logps:
        trl_ref = torch.cat([trl_batch["ref_chosen_logps"], trl_batch["ref_rejected_logps"]])
    else:
        trl_ref = torch.cat(trainer.compute_ref_log_probs(trainer.ref_model, trl_batch))
    assert (ref - trl_ref).abs().max().item() < TOL
    batch = {**batch, "ref_logps": ref}

    # Policy: per-pair summed completion log-probs through bcat's forward vs TRL's fused head.
    with torch.no_grad():
        out = PolicyForward(model)(batch["input_ids"], batch["attention_mask"], batch["target_mask"])
    ours_logps = sequence_logps(out["token_logps"], batch["target_mask"])[0]
    trl_logps = torch.cat(trainer.compute_ref_log_probs(model, trl_batch))
    assert (ours_logps - trl_logps).abs().max().item() < TOL
    assert (ours_logps - ref).abs().min().item() > 1e-2  # the policy really differs from the reference

    # Loss and gradients.
    mode = "train" if model.training else "eval"
    trainer._metrics[mode].clear()
    model.zero_grad(set_to_none=True)
    trl_loss = trainer.compute_loss(model, trl_batch)
    trl_loss.backward()
    trl_grads = _grads(model)
    metrics = {k: v[-1] for k, v in trainer._metrics[mode].items()}

    model.zero_grad(set_to_none=True)
    result = compute_loss(PolicyForward(model), batch, objective, ALIGN_OFF, hidden_layers=())
    result.loss.backward()
    ours_grads = _grads(model)
    model.zero_grad(set_to_none=True)

    assert abs(result.loss.item() - trl_loss.item()) < TOL
    assert abs(trl_loss.item() - math.log(2)) > 1e-3  # not the trivial policy == reference value
    assert torch.allclose(result.per_example.mean(), result.loss.detach(), atol=1e-7)
    assert _max_grad_diff(ours_grads, trl_grads) < TOL
    assert abs(metrics["logps/chosen"] - ours_logps[:n].mean().item()) < TOL
    assert abs(metrics["logps/rejected"] - ours_logps[n:].mean().item()) < TOL
    assert abs(metrics["rewards/margins"] - result.terms["reward_margin"].item()) < TOL
    assert metrics["rewards/accuracies"] == pytest.approx(result.terms["reward_accuracy"].item())


def test_dpo_from_bcat_tokenization_and_reference_callable(dpo, tok):
    """The whole bcat path (own tokenization, own collator, reference as a callable) gives TRL's loss."""
    trainer, _, trl_batch, _, ref_model, beta = dpo
    batch = GroupCollator(pad_token_id=tok.pad_token_id, anchor="en")(_bcat_tokenized(tok))
    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, trl_batch).item()
        ours = compute_loss(PolicyForward(trainer.model), batch, ObjectiveConfig(name="dpo", beta=beta), ALIGN_OFF,
                            hidden_layers=(), reference=lambda b: reference_logps(PolicyForward(ref_model), b))
    assert abs(ours.loss.item() - trl_loss) < TOL


# ----------------------------------------------------------------------------------------- ORPO


def test_orpo_batch_layout_matches_trl(orpo):
    trainer, _, trl_batch, batch, *_ = orpo
    cat = trainer.concatenated_inputs(trl_batch, padding_value=trainer.padding_value)
    assert torch.equal(batch["input_ids"], cat["concatenated_input_ids"])
    assert torch.equal(batch["attention_mask"], cat["concatenated_attention_mask"])
    assert torch.equal(batch["target_mask"], cat["concatenated_labels"][:, 1:] != -100)


def _trl_orpo(trainer, trl_batch):
    """TRL's ORPO loss, metrics and pieces, from one concatenated forward."""
    n = trl_batch["chosen_labels"].shape[0]
    chosen_logps, rejected_logps, chosen_logits, _, nll = trainer.concatenated_forward(trainer.model, trl_batch)
    losses, *_ , log_odds_ratio, log_odds = trainer.odds_ratio_loss(chosen_logps, rejected_logps)
    cat = trainer.concatenated_inputs(trl_batch, padding_value=trainer.padding_value)
    completion_labels = cat["concatenated_labels"][:n, 1:]  # prompt and padding are -100
    completion_nll = F.cross_entropy(chosen_logits.flatten(0, 1), completion_labels.flatten(), ignore_index=-100)
    return dict(chosen_logps=chosen_logps, rejected_logps=rejected_logps, nll=nll, odds_term=losses.mean(),
                log_odds=log_odds, completion_nll=completion_nll)


def test_orpo_loss_logps_and_grads_match_trl(orpo):
    """``orpo_nll_on_prompt=True``: TRL 1.16's NLL over prompt + completion of the chosen rows."""
    trainer, _, trl_batch, batch, lam, _ = orpo
    model = trainer.model
    n = len(batch["langs"])
    objective = ObjectiveConfig(name="orpo", orpo_lambda=lam, orpo_nll_on_prompt=True)

    model.zero_grad(set_to_none=True)
    trl_loss, metrics = trainer.get_batch_loss_metrics(model, trl_batch)
    trl_loss.backward()
    trl_grads = _grads(model)
    with torch.no_grad():
        pieces = _trl_orpo(trainer, trl_batch)

    model.zero_grad(set_to_none=True)
    result = compute_loss(PolicyForward(model), batch, objective, ALIGN_OFF, hidden_layers=())
    result.loss.backward()
    ours_grads = _grads(model)
    model.zero_grad(set_to_none=True)

    with torch.no_grad():
        out = PolicyForward(model)(batch["input_ids"], batch["attention_mask"], batch["target_mask"])
    mean_logps = sequence_logps(out["token_logps"], batch["target_mask"])[1]
    assert (mean_logps[:n] - pieces["chosen_logps"]).abs().max().item() < TOL
    assert (mean_logps[n:] - pieces["rejected_logps"]).abs().max().item() < TOL
    assert abs(result.terms["nll"].item() - metrics["nll_loss"]) < TOL
    assert abs(result.terms["log_odds"].item() - metrics["log_odds_chosen"]) < TOL
    assert abs(result.loss.item() - trl_loss.item()) < TOL
    assert _max_grad_diff(ours_grads, trl_grads) < TOL


def test_orpo_completion_only_nll_is_trl_with_completion_labels(orpo):
    """``orpo_nll_on_prompt=False`` (bcat's default) = TRL's odds-ratio term + NLL over TRL's completion labels."""
    trainer, _, trl_batch, batch, lam, _ = orpo
    objective = ObjectiveConfig(name="orpo", orpo_lambda=lam, orpo_nll_on_prompt=False)
    with torch.no_grad():
        pieces = _trl_orpo(trainer, trl_batch)
        trl_loss = trainer.get_batch_loss_metrics(trainer.model, trl_batch)[0].item()
        result = compute_loss(PolicyForward(trainer.model), batch, objective, ALIGN_OFF, hidden_layers=())
    expected = (pieces["completion_nll"] - pieces["odds_term"]).item()
    assert abs(result.terms["nll"].item() - pieces["completion_nll"].item()) < TOL
    assert abs(result.loss.item() - expected) < TOL
    assert abs(result.loss.item() - trl_loss) > 1e-3  # the flag matters: TRL's own loss includes the prompt
