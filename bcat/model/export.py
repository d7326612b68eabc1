"""Writing a trained model: safetensors in Hugging Face format, full vocabulary, written atomically.

A model trained on a trimmed vocabulary (:mod:`bcat.model.trim`) is written back as a normal
full-vocabulary model: full weights through :func:`export_full` (untouched rows bit-identical to the
original), a LoRA adapter through :func:`save_adapter` (it never touches the vocabulary, so it loads
onto the original model as it is).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from bcat.config import ModelConfig
from bcat.model.builtin import licence_files
from bcat.model.loading import TRAINED_MODEL_SUBDIR, load_model
from bcat.model.trim import TrimmedVocab
from bcat.output import replace_dir


def save_model(model, tokenizer, out: Path, merged: bool, vocab=None, base_dir: Path | None = None,
               state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """Final model as safetensors under ``out/model`` (and ``out/merged``), written atomically.

    With a trimmed vocabulary the output is still a normal full-vocabulary model: a LoRA adapter
    does not touch the vocabulary and loads onto the original model as it is; full weights are put
    back into the original vocabulary by :func:`export_full` (untouched rows bit-identical).

    ``state_dict``: the model's full state when its parameters are sharded (FSDP: gathered on rank
    0 by ``bcat.training.distributed.full_model_state``); by default ``model.state_dict()``. The
    merged model is the original base model from disk with the adapter just written merged in
    (the frozen base weights are the ones on disk), so it needs no unsharded copy in memory.
    """
    lora = hasattr(model, "peft_config")
    state_dict = model.state_dict() if state_dict is None else state_dict
    trained = out / TRAINED_MODEL_SUBDIR

    def write_trained(tmp: Path) -> None:
        if vocab is not None and lora:
            save_adapter(model, vocab, tmp, state_dict=state_dict)
            tokenizer.save_pretrained(tmp)
        elif vocab is not None:
            export_full(model, vocab, base_dir, tmp, state_dict=state_dict)
        else:
            model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
            tokenizer.save_pretrained(tmp)
        if lora:
            absolute_base_path(tmp)

    def write_merged(tmp: Path) -> None:
        dtype = next(iter(state_dict.values())).dtype
        name = str(dtype).removeprefix("torch.")
        full = load_model(ModelConfig(path=str(trained), dtype=name, trust_remote_code=False)).merge_and_unload()
        full.save_pretrained(tmp, safe_serialization=True)
        if vocab is not None:  # the original tokenizer and notice files, as export_full writes them
            _copy_base_files(base_dir, tmp)
        else:
            tokenizer.save_pretrained(tmp)

    replace_dir(trained, write_trained)
    if merged and lora:
        replace_dir(out / "merged", write_merged)


def absolute_base_path(adapter_dir: Path) -> None:
    """Store the adapter's base model as an absolute path: PEFT records the path the base was loaded
    from, and a relative one (``model.path=tiny``) would only resolve from the directory training ran in."""
    config_file = adapter_dir / "adapter_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    base = config.get("base_model_name_or_path")
    if base and not Path(base).is_absolute():
        config["base_model_name_or_path"] = str(Path(base).absolute())
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")


def _copy_base_files(base_dir: Path, out_dir: Path) -> None:
    """The original tokenizer and notice/licence files (a Gemma derivative must carry the Gemma notice)."""
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out_dir)
    for path in licence_files(base_dir):
        shutil.copy2(path, out_dir / path.name)


def untrim_state_dict(trimmed: dict[str, torch.Tensor], vocab: TrimmedVocab, full: dict[str, torch.Tensor],
                      inplace: bool = False) -> dict[str, torch.Tensor]:
    """Merge a trimmed model's state dict into the original full one.

    For the vocabulary keys (``vocab.param_names``): ``full[key][kept] = trimmed[key]``; the other
    rows are left as they are (bit-identical to ``full``). Every other key takes the trimmed model's
    value (trained body weights), cast to the full tensor's dtype. A key of the full state dict that
    the trimmed one lacks keeps its value (e.g. a tied ``lm_head.weight`` not stored in a file).
    ``inplace=True`` writes into ``full``'s tensors (no second copy of a large embedding).
    """
    out = full if inplace else dict(full)
    with torch.no_grad():
        for key, value in trimmed.items():
            if key not in full:
                raise KeyError(f"'{key}' of the trimmed model is not in the full model: not the same architecture")
            target = full[key] if inplace else full[key].clone()
            if key in vocab.param_names:
                if target.shape[0] != vocab.old_vocab_size or value.shape[0] != len(vocab):
                    raise ValueError(f"'{key}': shapes {tuple(value.shape)} (trimmed) and {tuple(target.shape)} (full) "
                                     f"do not match a {len(vocab)} of {vocab.old_vocab_size} trim")
                target[vocab.kept] = value.to(target.dtype)
            else:
                if target.shape != value.shape:
                    raise ValueError(f"'{key}': shape {tuple(value.shape)} != {tuple(target.shape)} of the full model")
                target.copy_(value)
            out[key] = target
    return out


def export_full(trimmed_model, vocab: TrimmedVocab, full_model_dir: str | Path, out_dir: str | Path,
                dtype: torch.dtype | None = None, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a full-vocabulary model directory that plain ``transformers`` loads.

    Loads the original from ``full_model_dir`` (in ``dtype``, default the trimmed model's dtype, so
    trained values are not rounded; upcasting bf16 to fp32 is exact), merges the trimmed weights
    with :func:`untrim_state_dict`, saves safetensors, the original tokenizer, and the original
    notice/licence files (a Gemma derivative must carry the Gemma notice).

    ``state_dict``: the trimmed model's full state when its parameters are sharded (default
    ``trimmed_model.state_dict()``).

    A LoRA model must be merged first (``model = model.merge_and_unload()``). Alternatively keep
    the adapter alone (:func:`save_adapter`): LoRA on attention/MLP layers does not touch the
    vocabulary, so an adapter trained on the trimmed model loads unchanged onto the full model.
    """
    from transformers import AutoModelForCausalLM

    if hasattr(trimmed_model, "peft_config"):
        raise TypeError("merge the adapter first (model.merge_and_unload()) or save the adapter alone")
    full_model_dir, out_dir = Path(full_model_dir), Path(out_dir)
    dtype = dtype or next(trimmed_model.parameters()).dtype
    full = AutoModelForCausalLM.from_pretrained(full_model_dir, dtype=dtype, use_safetensors=True)
    if full.get_input_embeddings().weight.shape[0] != vocab.old_vocab_size:
        raise ValueError(f"{full_model_dir} has {full.get_input_embeddings().weight.shape[0]} tokens, "
                         f"the trim was made from {vocab.old_vocab_size}")
    trimmed = trimmed_model.state_dict() if state_dict is None else state_dict
    untrim_state_dict(trimmed, vocab, full.state_dict(), inplace=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    full.save_pretrained(out_dir)
    _copy_base_files(full_model_dir, out_dir)
    return out_dir


def save_adapter(peft_model, vocab: TrimmedVocab, out_dir: str | Path,
                 state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Save a LoRA adapter trained on a trimmed model so that it loads onto the FULL model.

    LoRA on attention/MLP projections never touches the vocabulary, so the adapter is the same for
    both models. PEFT however notices that ``vocab_size`` differs from the base config and would
    save the (trimmed) embedding and output layers with the adapter, which then no longer fits the
    full model: ``save_embedding_layers=False`` prevents that. An adapter that trains the
    vocabulary layers themselves (LoRA on them, ``modules_to_save``, trainable tokens) is refused:
    merge it and use :func:`export_full` instead. ``state_dict``: the model's full state when its
    parameters are sharded.
    """
    vocab_modules = {name.rsplit(".", 1)[0].split(".")[-1] for name in vocab.param_names}  # embed_tokens, lm_head
    adapted = [name for name, _ in peft_model.named_parameters()
               if any(tag in name for tag in ("lora_", "modules_to_save", "trainable_tokens"))
               and any(f".{module}." in name for module in vocab_modules)]
    if adapted:
        raise ValueError(f"the adapter trains vocabulary layers ({adapted[0]}, ...): it depends on the trim; "
                         "merge it (merge_and_unload) and use export_full")
    peft_model.save_pretrained(out_dir, save_embedding_layers=False, state_dict=state_dict)
    return Path(out_dir)
