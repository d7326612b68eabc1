"""Load a causal LM and its tokenizer from a local directory, add LoRA, save as safetensors.

Only local files are read (the CLI sets the Hugging Face offline flags), only safetensors weights
are accepted, and ``trust_remote_code`` stays off unless the config turns it on.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from bcat.config import ModelConfig
from bcat.errors import ConfigError

log = logging.getLogger(__name__)

TRAINED_MODEL_SUBDIR = "model"
"""Where ``bcat train`` puts the tuned model inside its output directory."""


def resolve_model_dir(path: str) -> Path:
    """``builtin:NAME`` -> the converted built-in model; a ``bcat train`` output dir -> its model."""
    if path.startswith("builtin:"):
        from bcat.builtin_model import resolve

        return Path(resolve(path))
    p = Path(path)
    if (p / TRAINED_MODEL_SUBDIR / "config.json").exists() or (p / TRAINED_MODEL_SUBDIR / "adapter_config.json").exists():
        p = p / TRAINED_MODEL_SUBDIR
    if not p.is_dir():
        raise ConfigError(f"model.path: directory not found: {path}")
    if not (p / "config.json").exists() and not (p / "adapter_config.json").exists():
        raise ConfigError(f"model.path: {p} has no config.json: not a Hugging Face model directory")
    return p


def load_tokenizer(path: str | Path, trust_remote_code: bool = False):
    """The model's tokenizer, with a pad token chosen where that is safe."""
    from transformers import AutoTokenizer

    path = resolve_model_dir(str(path))
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as e:
        _refuse_remote_code(e, path)
        raise ConfigError(f"model.path: {path} has no usable tokenizer ({e})") from None
    if tokenizer.pad_token_id is None:
        # bcat masks padding with attention and target masks and never trains on pad positions, so
        # reusing EOS as pad cannot hide the EOS at the end of completions.
        if tokenizer.eos_token_id is None:
            raise ConfigError(f"model.path: the tokenizer in {path} has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
        log.info("bcat: the tokenizer has no pad token; using EOS (%r) as pad", tokenizer.eos_token)
    return tokenizer


def _refuse_remote_code(error: Exception, path) -> None:
    """Turn transformers' "needs trust_remote_code" refusal into one clear line (the code never ran)."""
    if "trust_remote_code" in str(error):
        raise ConfigError(
            f"model.path: {path} needs to run Python code shipped with the model (auto_map in its config); "
            "bcat does not run it unless you set model.trust_remote_code=true"
        ) from None


def stored_parameters(path: str | Path) -> int:
    """Parameters in the model's safetensors files, read from their headers (no weights loaded); 0 if unknown."""
    import math
    import struct

    try:
        p = resolve_model_dir(str(path))
        adapter_cfg = p / "adapter_config.json"
        if adapter_cfg.exists():
            p = Path(json.loads(adapter_cfg.read_text())["base_model_name_or_path"])
        total = 0
        for f in p.glob("*.safetensors"):
            with open(f, "rb") as fh:
                header = json.loads(fh.read(struct.unpack("<Q", fh.read(8))[0]))
            total += sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
        return total
    except Exception:  # the real load reports a broken model directory properly
        return 0


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: fp32 on CPU (bf16 matmuls are ~500x slower there), bf16 on GPUs that have it."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise ConfigError(f"model.dtype must be auto, float32, bfloat16 or float16, got {name!r}") from None


def load_model(cfg: ModelConfig, device: torch.device | None = None):
    """Base model (safetensors only) from ``cfg.path``; a saved LoRA adapter is loaded on its base."""
    from transformers import AutoModelForCausalLM

    device = device or torch.device("cpu")
    path = resolve_model_dir(cfg.path)
    dtype = pick_dtype(cfg.dtype, device)
    adapter_cfg = path / "adapter_config.json"
    base_path = Path(json.loads(adapter_cfg.read_text())["base_model_name_or_path"]) if adapter_cfg.exists() else path
    try:
        model = AutoModelForCausalLM.from_pretrained(
            base_path, dtype=dtype, trust_remote_code=cfg.trust_remote_code, use_safetensors=True
        )
    except OSError as e:
        raise ConfigError(f"model.path: cannot load safetensors weights from {base_path} ({e})") from None
    except ValueError as e:
        _refuse_remote_code(e, base_path)
        raise ConfigError(f"model.path: cannot load the model in {base_path} ({str(e).splitlines()[0]})") from None
    if adapter_cfg.exists():
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, path, is_trainable=False)
    return model.to(device)


def add_lora(model, cfg: ModelConfig):
    """Wrap ``model`` with a trainable LoRA adapter on the configured projections."""
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    targets = [t for t in cfg.lora_target_modules if t in present]
    if not targets:
        raise ConfigError(
            f"model.lora_target_modules {cfg.lora_target_modules} match no linear layer; "
            f"this model has {sorted(present)}"
        )
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
