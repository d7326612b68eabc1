"""bcat inside TRL 1.16 (``bcat.integrations.trl``), on a tiny random Llama and 4 groups x 3 languages:

- every training micro-batch is one of bcat's group sampler (whole groups, anchor first), on one process
  and on two (``accelerate launch``, gloo on CPU): accelerate does not re-shard the rank's batches, and
  two ranks x 1 micro-batch give the per-step losses of one rank x 2 micro-batches;
- with the alignment terms off, the loss is plain TRL's (a stock TRL trainer on the same batch); with
  them on, it is that plus the weighted terms;
- the terms equal those of bcat's own ``compute_loss`` on the same token ids within 1e-5 (SFT, DPO with
  precomputed, separate-model and adapter-off references, ORPO, plain ``transformers.Trainer``);
- settings that would split groups, and token KL, are refused.
"""

from __future__ import annotations

import json
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import parallel_records

datasets = pytest.importorskip("datasets")
pytest.importorskip("trl")

from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq  # noqa: E402
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer  # noqa: E402
from trl.experimental.orpo import ORPOConfig, ORPOTrainer  # noqa: E402

from bcat.batching.collate import GroupCollator  # noqa: E402
from bcat.batching.plan import build_sampler  # noqa: E402
from bcat.config import AlignmentConfig, BatchConfig, ObjectiveConfig, TrainConfig  # noqa: E402
from bcat.data.tokenization import Example  # noqa: E402
from bcat.errors import ConfigError  # noqa: E402
from bcat.integrations import trl as bt  # noqa: E402
from bcat.model.forward import PolicyForward  # noqa: E402
from bcat.training.hidden import fit_hidden_standardization  # noqa: E402
from bcat.training.objectives import compute_loss, reference_logps  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

LANGS = ("en", "fr", "de")
TOL = 1e-5
ALIGN = AlignmentConfig(hidden_weight=3.0, output_weight=2.0)  # InfoNCE on the middle layer + output agreement


def _stats(model_dir) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed standardisation statistics ``(mean, scale)`` [1, D] for the middle layer (given to both trainers)."""
    from transformers import AutoConfig

    d = AutoConfig.from_pretrained(model_dir).hidden_size
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, d, generator=g) * 0.1, torch.rand(1, d, generator=g) + 0.5
BATCH = BatchConfig(mode="grouped", groups_per_batch=2)
SCRIPT = Path(__file__).with_name("trl_run.py")


# ------------------------------------------------------------------------------------------- builders


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _model(model_dir, seed: int | None = None):
    """The tiny model; with ``seed``, its weights moved off the saved ones (policy != reference)."""
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if seed is not None:
        _perturb(model, seed)
    return model


def _perturb(model, seed: int, names: str = "") -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if names in name:
                p.add_(0.05 * torch.randn(p.shape, generator=gen))


def _args(config_cls, tmp_path, **kw):
    return config_cls(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True, save_strategy="no", bf16=False,
                      disable_tqdm=True, **kw)


def _data(objective: str):
    return datasets.Dataset.from_list(parallel_records(4, langs=LANGS, objective=objective))


def _sft(model_dir, tok, tmp_path, bcat=True, **kw):
    cls = bt.BCATSFTTrainer if bcat else SFTTrainer
    extra = {"batch": BATCH, "alignment": kw.pop("alignment", ALIGN),
             "hidden_standardization": kw.pop("hidden_standardization", _stats(model_dir))} if bcat else {}
    return cls(model=_model(model_dir, seed=3), args=_args(SFTConfig, tmp_path, **kw), train_dataset=_data("sft"),
               processing_class=tok, **extra)


def _dpo(model_dir, tok, tmp_path, bcat=True, reference="separate", **kw):
    """``reference``: ``separate`` (a frozen copy), ``precomputed`` (TRL's precomputed log-probs) or ``adapter``
    (LoRA: the policy with its adapter off). The policy is moved off the reference after TRL's set-up."""
    from peft import LoraConfig

    cls = bt.BCATDPOTrainer if bcat else DPOTrainer
    extra = {"batch": BATCH, "alignment": kw.pop("alignment", ALIGN),
             "hidden_standardization": kw.pop("hidden_standardization", _stats(model_dir))} if bcat else {}
    args = _args(DPOConfig, tmp_path, precompute_ref_log_probs=reference == "precomputed", **kw)
    trainer = cls(model=_model(model_dir), ref_model=_model(model_dir) if reference == "separate" else None,
                  args=args, train_dataset=_data("dpo"), processing_class=tok,
                  peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]) if reference == "adapter" else None,
                  **extra)
    _perturb(trainer.model, seed=1, names="lora_B" if reference == "adapter" else "")
    return trainer


def _orpo(model_dir, tok, tmp_path, bcat=True, **kw):
    cls = bt.BCATORPOTrainer if bcat else ORPOTrainer
    extra = {"batch": BATCH, "alignment": kw.pop("alignment", ALIGN),
             "hidden_standardization": kw.pop("hidden_standardization", _stats(model_dir))} if bcat else {}
    return cls(model=_model(model_dir, seed=2), args=_args(ORPOConfig, tmp_path, max_length=512, **kw),
               train_dataset=_data("orpo"), processing_class=tok, **extra)


def _plain(model_dir, tok, tmp_path, **kw):
    from transformers import TrainingArguments

    def tokenize(r):
        prompt = tok(r["prompt"])["input_ids"]
        answer = tok(r["completion"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        return {"input_ids": prompt + answer, "attention_mask": [1] * (len(prompt) + len(answer)),
                "labels": [-100] * len(prompt) + answer}

    alignment = kw.pop("alignment", ALIGN)
    stats = kw.pop("hidden_standardization", _stats(model_dir))
    data = _data("sft").map(tokenize, remove_columns=["prompt", "completion"])
    return bt.BCATTrainer(model=_model(model_dir, seed=4), args=_args(TrainingArguments, tmp_path, **kw),
                          train_dataset=data, data_collator=DataCollatorForSeq2Seq(tok, padding=True),
                          batch=BATCH, alignment=alignment, hidden_standardization=stats)


BUILD = {"sft": _sft, "dpo": _dpo, "orpo": _orpo, "plain": _plain}


def _keys(trainer, records: list[int]) -> list[tuple[str, str]]:
    data = trainer.train_dataset
    return [(data[i]["group"], data[i]["lang"]) for i in records]


def _first_batch(trainer):
    """The first training micro-batch as the trainer's dataloader gives it, and its record indices."""
    records = trainer.group_sampler.epoch_plan(0)[0][0].records
    batch = next(iter(trainer.get_train_dataloader()))
    assert list(zip(batch[bt.GROUPS], batch[bt.LANGS])) == _keys(trainer, records)
    return batch, records


def _without_keys(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k not in (bt.GROUPS, bt.LANGS)}


def _assert_whole_groups(batch_keys: list[tuple[str, str]]) -> None:
    """Each group of the batch is contiguous, complete (all three languages) and led by the anchor."""
    groups = [g for g, _ in batch_keys]
    starts = [i for i, g in enumerate(groups) if i == 0 or groups[i - 1] != g]
    assert len(starts) == len(set(groups)), f"a group is split inside the batch: {batch_keys}"
    for s in starts:
        members = [lang for g, lang in batch_keys if g == groups[s]]
        assert members[0] == "en" and sorted(members) == sorted(LANGS), batch_keys


# ------------------------------------------------------------------------------------- batches


@pytest.mark.parametrize("kind", ["sft", "dpo", "orpo", "plain"])
def test_training_sees_the_group_plan_one_process(kind, tiny_model_dir, tok, tmp_path):
    trainer = BUILD[kind](tiny_model_dir, tok, tmp_path, max_steps=3, logging_steps=1, learning_rate=1e-3)
    seen = []
    loss = trainer.compute_loss

    def recording(model, inputs, **kwargs):
        seen.append(list(zip(inputs[bt.GROUPS], inputs[bt.LANGS])))
        return loss(model, inputs, **kwargs)

    trainer.compute_loss = recording
    trainer.train()
    sampler = trainer.group_sampler
    expected = [_keys(trainer, rnd[0].records) for epoch in (0, 1) for rnd in sampler.epoch_plan(epoch)][:3]
    assert len(sampler) == 2 and seen == expected  # epoch 0's two micro-batches, then epoch 1's first
    for keys in seen:
        _assert_whole_groups(keys)
        assert len({g for g, _ in keys}) == 2
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 3 and all(entry["bcat/hidden"] > 0 for entry in logged)


def test_two_processes_keep_whole_groups_and_match_one_process(tiny_model_dir, tmp_path):
    """2 ranks x 1 micro-batch == 1 rank x 2 micro-batches: the same records per step, and the same losses."""
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
    runpy.run_path(str(SCRIPT))["run"](str(tiny_model_dir), str(tmp_path / "one"), 2)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])}
    launcher = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or "accelerate"
    done = subprocess.run([launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", str(SCRIPT), str(tiny_model_dir),
                           str(tmp_path / "two"), "1"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "rank0.json").read_text())
    two = [json.loads((tmp_path / "two" / f"rank{r}.json").read_text()) for r in (0, 1)]

    keys = [(r["group"], r["lang"]) for r in parallel_records(4, langs=LANGS)]
    cfg = TrainConfig(batch=BatchConfig(mode="grouped", groups_per_batch=1))
    plans = [build_sampler(cfg, [bt._Keyed(g, lang, 0) for g, lang in keys], 2, rank) for rank in (0, 1)]
    for rank, run in enumerate(two):
        expected = [[list(keys[i]) for i in rnd[rank].records] for e in (0, 1) for rnd in plans[rank].epoch_plan(e)]
        assert run["batches"] == expected[:3]  # this rank's own micro-batches: nothing re-sharded
    for step in range(3):
        rank_batches = [run["batches"][step] for run in two]
        for batch in rank_batches:
            _assert_whole_groups([tuple(k) for k in batch])
        assert not {g for g, _ in rank_batches[0]} & {g for g, _ in rank_batches[1]}  # no group on both ranks
        assert one["batches"][2 * step: 2 * step + 2] == rank_batches
    one_log, two_log = ([e for e in run["log"] if "loss" in e] for run in (one, two[0]))
    assert len(one_log) == len(two_log) == 3
    for a, b in zip(one_log, two_log):
        for key in ("loss", "bcat/hidden", "bcat/output", "rewards/margins"):
            assert a[key] == pytest.approx(b[key], abs=1e-4), key


def test_epoch_follows_the_trainer_state_when_resuming_mid_epoch(tiny_model_dir, tok, tmp_path):
    from types import SimpleNamespace

    trainer = _dpo(tiny_model_dir, tok, tmp_path)
    (callback,) = [c for c in trainer.callback_handler.callbacks if isinstance(c, bt._EpochFromState)]
    callback.on_epoch_begin(trainer.args, SimpleNamespace(epoch=1.5), None)
    batches = trainer.get_train_dataloader().batch_sampler
    assert trainer._batches.epoch == 1
    assert [list(b) for b in batches] == [rnd[0].records for rnd in trainer.group_sampler.epoch_plan(1)]


def test_batch_settings_reach_the_sampler(tiny_model_dir, tok, tmp_path):
    trainer = bt.BCATDPOTrainer(model=_model(tiny_model_dir), args=_args(DPOConfig, tmp_path),
                                train_dataset=_data("dpo"), processing_class=tok,
                                batch=BatchConfig(mode="monolingual", groups_per_batch=1, seed=7, order_by_length=True),
                                alignment=AlignmentConfig(hidden_weight=0))
    sampler = trainer.group_sampler
    assert (sampler.mode, sampler.groups_per_batch, sampler.seed, sampler.order_by_length) == ("monolingual", 1, 7, True)
    for rnd in sampler.epoch_plan(0):
        assert len({lang for _, lang in _keys(trainer, rnd[0].records)}) == 1


# ------------------------------------------------------------------------------------------- loss


@pytest.mark.parametrize("kind", ["sft", "dpo", "orpo"])
def test_alignment_off_is_plain_trl_and_on_adds_the_weighted_terms(kind, tiny_model_dir, tok, tmp_path):
    plain = BUILD[kind](tiny_model_dir, tok, tmp_path / "plain", bcat=False)
    off = BUILD[kind](tiny_model_dir, tok, tmp_path / "off", alignment=AlignmentConfig(hidden_weight=0, output_weight=0))
    on = BUILD[kind](tiny_model_dir, tok, tmp_path / "on")
    batch, _ = _first_batch(on)
    for trainer in (plain, off, on):
        trainer.model.train()
    with torch.no_grad():
        trl_loss = plain.compute_loss(plain.model, _without_keys(batch)).item()
        off_loss = off.compute_loss(off.model, dict(batch)).item()
        on_loss = on.compute_loss(on.model, dict(batch)).item()
    assert off_loss == pytest.approx(trl_loss, abs=1e-6)
    terms = on.alignment_terms
    # neither term is trivially 0 (SFT's output term compares answer probabilities near 1/vocab: tiny but > 0)
    assert terms["hidden"] > 1e-3 and terms["output"] > 1e-12
    expected = trl_loss + ALIGN.hidden_weight * terms["hidden"].item() + ALIGN.output_weight * terms["output"].item()
    assert on_loss == pytest.approx(expected, abs=1e-6)


def test_terms_are_averaged_over_accumulation_when_trl_normalises_the_loss(tiny_model_dir, tok, tmp_path):
    """SFT normalises by the token count of all accumulated micro-batches (``num_items_in_batch``), so Trainer
    does not divide its loss by the accumulation steps; the per-micro-batch alignment terms are divided here."""
    trainer = _sft(tiny_model_dir, tok, tmp_path)
    batch, _ = _first_batch(trainer)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 2
    items = torch.tensor(2 * int((batch["labels"][:, 1:] != -100).sum()))
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=items).item()
        trl_loss = SFTTrainer.compute_loss(trainer, trainer.model, _without_keys(batch), num_items_in_batch=items).item()
    terms = trainer.alignment_terms
    weighted = ALIGN.hidden_weight * terms["hidden"].item() + ALIGN.output_weight * terms["output"].item()
    assert loss == pytest.approx(trl_loss + weighted / 2, abs=1e-6)


def _bcat_batch(trainer, kind, tok, records: list[int]) -> dict:
    """bcat's own collated batch of the same records, from the token ids the TRL trainer made."""
    batch = GroupCollator(pad_token_id=tok.pad_token_id, anchor="en", bos_token_id=tok.bos_token_id)(
        _examples(trainer, kind, records))
    if kind == "dpo" and trainer.precompute_ref_logps:
        rows = [trainer.train_dataset[i] for i in records]
        batch["ref_logps"] = torch.tensor([r["ref_chosen_logps"] for r in rows] + [r["ref_rejected_logps"] for r in rows])
    return batch


def _examples(trainer, kind, records) -> list[Example]:
    """bcat's examples of the records, from the token ids the TRL trainer made."""
    examples = []
    for i in records:
        row = trainer.train_dataset[i]
        if kind == "dpo":
            prompt, answers = row["prompt_ids"], (row["chosen_ids"], row["rejected_ids"])
        elif kind == "orpo":
            k = sum(label == -100 for label in row["chosen_labels"])
            prompt, answers = row["chosen_input_ids"][:k], (row["chosen_input_ids"][k:], row["rejected_input_ids"][k:])
        else:  # sft, plain: the prompt is where the labels are -100
            k = sum(label == -100 for label in row["labels"])
            prompt, answers = row["input_ids"][:k], (row["input_ids"][k:],)
        examples.append(Example(i, row["group"], row["lang"], list(prompt), tuple(list(a) for a in answers)))
    return examples


@pytest.mark.parametrize("kind", ["sft", "dpo-separate", "dpo-precomputed", "dpo-adapter", "orpo", "plain"])
def test_alignment_terms_equal_bcats_own(kind, tiny_model_dir, tok, tmp_path):
    kind, _, reference = kind.partition("-")
    trainer = BUILD[kind](tiny_model_dir, tok, tmp_path, **({"reference": reference} if reference else {}))
    batch, records = _first_batch(trainer)
    model = trainer.model.train()
    with torch.no_grad():
        trainer.compute_loss(model, dict(batch))
    ours = trainer.alignment_terms

    policy = PolicyForward(model)
    objective = ObjectiveConfig(name="sft" if kind == "plain" else kind, beta=getattr(trainer, "beta", 0.1))
    ref = None
    if reference == "separate":
        ref = lambda b: reference_logps(PolicyForward(trainer.ref_model), b)  # noqa: E731
    elif reference == "adapter":
        def ref(b):
            with model.disable_adapter():
                return reference_logps(policy, b)
    with torch.no_grad():
        result = compute_loss(policy, _bcat_batch(trainer, kind, tok, records), objective, ALIGN,
                              trainer.hidden_layers, ref, _stats(tiny_model_dir))
    assert trainer.hidden_layers == (2,)
    for term in ("hidden", "output"):
        assert result.terms[term].item() > 1e-12, term
        # the output term compares probabilities (tiny under SFT on a random model): relative there
        tol = {"abs": TOL} if term == "hidden" else {"rel": 1e-3, "abs": 1e-12}
        assert ours[term].item() == pytest.approx(result.terms[term].item(), **tol), term


@pytest.mark.parametrize("kind", ["sft", "dpo", "orpo", "plain"])
def test_standardization_is_fitted_as_bcat_train_fits_it(kind, tiny_model_dir, tok, tmp_path):
    """Without ``hidden_standardization=``, the trainer fits the statistics at construction as ``bcat train`` does:
    the same seeded sample of records, pooled the same way, on the initial model (DPO: a fresh LoRA adapter)."""
    align = AlignmentConfig(hidden_weight=3.0, hidden_stats_records=5)
    trainer = BUILD[kind](tiny_model_dir, tok, tmp_path, alignment=align, hidden_standardization=None,
                          **({"reference": "adapter"} if kind == "dpo" else {}))
    if kind == "dpo":  # the builder moved the adapter off zero after construction; the fit saw it at zero
        with torch.no_grad():
            for name, p in trainer.model.named_parameters():
                if "lora_B" in name:
                    p.zero_()
    examples = _examples(trainer, kind, range(len(trainer.train_dataset)))
    collator = GroupCollator(pad_token_id=tok.pad_token_id, anchor="en", bos_token_id=tok.bos_token_id)
    expected = fit_hidden_standardization(PolicyForward(trainer.model), examples, collator, trainer.hidden_layers,
                                          align.hidden_standardize, align.hidden_stats_records, trainer.args.seed)
    mean, scale = trainer.hidden_standardization
    assert mean.shape == scale.shape == (1, trainer.model.config.hidden_size)
    assert torch.allclose(mean, expected.mean, atol=1e-5) and torch.allclose(scale, expected.scale, atol=1e-5)
    assert not torch.allclose(scale, torch.ones_like(scale))


def test_alignment_terms_carry_gradients(tiny_model_dir, tok, tmp_path):
    """The hidden and output terms reach the weights through TRL's own forward (nothing is detached)."""
    trainer = _dpo(tiny_model_dir, tok, tmp_path, alignment=AlignmentConfig(hidden_weight=1.0, output_weight=0))
    plain = _dpo(tiny_model_dir, tok, tmp_path / "plain", bcat=False)
    batch, _ = _first_batch(trainer)
    grads = []
    for t, inputs in ((trainer, dict(batch)), (plain, _without_keys(batch))):
        t.model.train().zero_grad()
        t.compute_loss(t.model, inputs).backward()
        grads.append(t.model.model.layers[0].self_attn.q_proj.weight.grad.clone())
    assert (grads[0] - grads[1]).abs().max().item() > 1e-6


# ------------------------------------------------------------------------------------ refusals


def test_refuses_what_would_split_groups_or_cannot_be_computed(tiny_model_dir, tok, tmp_path):
    with pytest.raises(ConfigError, match="token_kl_weight"):
        _dpo(tiny_model_dir, tok, tmp_path, alignment=AlignmentConfig(token_kl_weight=0.1))
    with pytest.raises(ConfigError, match="packing"):
        _sft(tiny_model_dir, tok, tmp_path, packing=True, max_length=64)
    with pytest.raises(ConfigError, match="train_sampling_strategy"):
        _dpo(tiny_model_dir, tok, tmp_path, train_sampling_strategy="group_by_length")
    with pytest.raises(ConfigError, match="'lang'"):
        bt.BCATDPOTrainer(model=_model(tiny_model_dir), args=_args(DPOConfig, tmp_path), processing_class=tok,
                          train_dataset=_data("dpo").remove_columns("lang"))
    with pytest.raises(ConfigError, match="batch.groups_per_batch"):
        bt.BCATDPOTrainer(model=_model(tiny_model_dir), args=_args(DPOConfig, tmp_path), processing_class=tok,
                          train_dataset=_data("dpo"), batch=BatchConfig(mode="grouped", groups_per_batch=9))
