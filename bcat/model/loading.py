"""Load a causal LM and its tokenizer from a local directory, add LoRA, save as safetensors.

Only local files are read (the CLI sets the Hugging Face offline flags), only safetensors weights
are accepted, and ``trust_remote_code`` stays off unless the config turns it on. Training
(:func:`load_model`) and evaluation (:func:`load_for_eval`) load the same way; ``option`` names the
setting the path came from (``model.path``, ``--model``) in error messages.
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


def resolve_model_dir(path: str, option: str = "model.path") -> Path:
    """``builtin:NAME`` -> the converted built-in model; a ``bcat train`` output dir -> its model."""
    if path.startswith("builtin:"):
        from bcat.model.builtin import resolve

        return Path(resolve(path))
    p = Path(path).expanduser()
    if (p / TRAINED_MODEL_SUBDIR / "config.json").exists() or (p / TRAINED_MODEL_SUBDIR / "adapter_config.json").exists():
        p = p / TRAINED_MODEL_SUBDIR
    if not p.is_dir():
        raise ConfigError(f"{option}: directory not found: {path} (models load from local directories only)")
    if not (p / "config.json").exists() and not (p / "adapter_config.json").exists():
        raise ConfigError(f"{option}: {p} has no config.json: not a Hugging Face model directory")
    return p


def base_model_dir(path: Path, option: str = "model.path") -> Path:
    """The base model under a LoRA adapter directory (``path`` itself for a full model)."""
    adapter_cfg = path / "adapter_config.json"
    if not adapter_cfg.exists():
        return path
    base = json.loads(adapter_cfg.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise ConfigError(f"{option}: {adapter_cfg} has no base_model_name_or_path; cannot find the base model")
    return resolve_model_dir(base, option)


def _has_tokenizer(path: Path) -> bool:
    return any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))


def load_tokenizer(path: str | Path, trust_remote_code: bool = False, option: str = "model.path"):
    """The model's tokenizer (an adapter's own, else its base model's), with a pad token chosen where that is safe."""
    from transformers import AutoTokenizer

    path = resolve_model_dir(str(path), option)
    if not _has_tokenizer(path):
        path = base_model_dir(path, option)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as e:
        _refuse_remote_code(e, path, option)
        raise ConfigError(f"{option}: {path} has no usable tokenizer ({e})") from None
    if tokenizer.pad_token_id is None:
        # bcat masks padding with attention and target masks and never trains on pad positions, so
        # reusing EOS as pad cannot hide the EOS at the end of completions.
        if tokenizer.eos_token_id is None:
            raise ConfigError(f"{option}: the tokenizer in {path} has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
        log.info("bcat: the tokenizer has no pad token; using EOS (%r) as pad", tokenizer.eos_token)
    return tokenizer


def _refuse_remote_code(error: Exception, path, option: str) -> None:
    """Turn transformers' "needs trust_remote_code" refusal into one clear line (the code never ran)."""
    if "trust_remote_code" in str(error):
        setting = "model.trust_remote_code=true" if option == "model.path" else "--trust-remote-code"
        raise ConfigError(
            f"{option}: {path} needs to run Python code shipped with the model (auto_map in its config); "
            f"bcat does not run it unless you set {setting}"
        ) from None


def stored_parameters(path: str | Path) -> int:
    """Parameters in the model's safetensors files, read from their headers (no weights loaded); 0 if unknown."""
    import math
    import struct

    try:
        p = base_model_dir(resolve_model_dir(str(path)))
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


def load_model(cfg: ModelConfig, device: torch.device | None = None, option: str = "model.path"):
    """Base model (safetensors only) from ``cfg.path``; a saved LoRA adapter is loaded on its base."""
    from transformers import AutoModelForCausalLM

    device = device or torch.device("cpu")
    path = resolve_model_dir(cfg.path, option)
    dtype = pick_dtype(cfg.dtype, device)
    base_path = base_model_dir(path, option)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            base_path, dtype=dtype, trust_remote_code=cfg.trust_remote_code, use_safetensors=True
        )
    except OSError as e:
        raise ConfigError(f"{option}: cannot load safetensors weights from {base_path} ({e})") from None
    except ValueError as e:
        _refuse_remote_code(e, base_path, option)
        raise ConfigError(f"{option}: cannot load the model in {base_path} ({str(e).splitlines()[0]})") from None
    if base_path != path:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, path, is_trainable=False)
        log.info("bcat: loaded adapter %s on %s", path, base_path)
    return model.to(device)


def load_for_eval(path: str, trust_remote_code: bool = False, device: str = "cpu"):
    """``(model, tokenizer)`` for evaluation: fp32 (bf16 matmuls are two orders of magnitude slower on
    CPUs without AVX-512 BF16), an adapter merged into its base for speed, eval mode."""
    cfg = ModelConfig(path=path, dtype="float32", trust_remote_code=trust_remote_code)
    model = load_model(cfg, torch.device(device), option="--model")
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return model.eval(), load_tokenizer(path, trust_remote_code, option="--model")


def add_lora(model, cfg: ModelConfig):
    """Wrap ``model`` with a trainable LoRA adapter on the configured projections."""
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    missing = [t for t in cfg.lora_target_modules if t not in present]
    if missing or not cfg.lora_target_modules:
        # Every name must match: dropping one silently would train fewer layers than configured.
        raise ConfigError(
            f"model.lora_target_modules: {missing or cfg.lora_target_modules} match no linear layer of this model; "
            f"its linear layers are {sorted(present)}"
        )
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.lora_target_modules), task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def middle_layer(config) -> int:
    """Index into ``hidden_states`` (0 = embeddings) of the middle transformer layer."""
    config = getattr(config, "text_config", config)
    return config.num_hidden_layers // 2


def resolve_hidden_layers(path: str, layers, option: str = "config key 'alignment.hidden_layers'",
                          trust_remote_code: bool = False) -> tuple[int, ...]:
    """The aligned layers of a run, checked against the model's config.json (no weights are read).

    ``None`` gives the middle layer; an index outside ``0..L`` (``L`` transformer layers; 0 is the
    embedding output) is a :class:`ConfigError` naming the valid range, before any work.
    """
    from transformers import AutoConfig

    model_dir = base_model_dir(resolve_model_dir(path))
    try:
        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        _refuse_remote_code(e, path, "model.path")
        raise ConfigError(f"model.path: cannot read the model config in {model_dir} ({str(e).splitlines()[0]})") from None
    if layers is None:
        return (middle_layer(config),)
    count = getattr(getattr(config, "text_config", config), "num_hidden_layers")
    bad = [i for i in layers if not 0 <= i <= count]
    if bad:
        raise ConfigError(f"{option} has {bad}: this model has {count} transformer layers, so valid "
                          f"indices into hidden_states are 0 (embeddings) to {count}")
    return tuple(layers)
