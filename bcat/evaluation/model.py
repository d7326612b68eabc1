"""Loading a model for evaluation: a local directory, a LoRA adapter directory, or ``builtin:NAME``.

Always offline, always fp32 (bf16 matmuls are two orders of magnitude slower on CPUs without
AVX-512 BF16). A directory with ``adapter_config.json`` is a PEFT adapter: its base model is
loaded first (a local path or ``builtin:NAME``), the adapter applied and merged for speed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from bcat.errors import BcatError

log = logging.getLogger(__name__)


def resolve_model_path(path: str) -> Path:
    """A local directory for ``path``; ``builtin:NAME`` is resolved by :mod:`bcat.builtin_model`."""
    if path.startswith("builtin:"):
        try:
            from bcat.builtin_model import resolve
        except ImportError as e:
            raise BcatError(f"{path}: the built-in model support (bcat.builtin_model) is not available") from e
        return Path(resolve(path))
    local = Path(path).expanduser()
    if not local.is_dir():
        raise BcatError(f"model directory not found: {path} (models load from local directories only)")
    return local


def _has_tokenizer(path: Path) -> bool:
    return any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))


def load_for_eval(path: str, trust_remote_code: bool = False, device: str = "cpu"):
    """Load ``(model, tokenizer)`` for generation: fp32, eval mode, on ``device``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = resolve_model_path(path)
    adapter_config = local / "adapter_config.json"
    base_dir, adapter_dir = local, None
    if adapter_config.exists():
        base_name = json.loads(adapter_config.read_text(encoding="utf-8")).get("base_model_name_or_path")
        if not base_name:
            raise BcatError(f"{adapter_config}: no base_model_name_or_path; cannot find the base model")
        base_dir, adapter_dir = resolve_model_path(base_name), local
    try:
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32,
                                                     trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(
            adapter_dir if adapter_dir is not None and _has_tokenizer(adapter_dir) else base_dir,
            trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise BcatError(f"cannot load a causal LM from {base_dir}: {e}") from e
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
        log.info("loaded adapter %s on %s", adapter_dir, base_dir)
    model.to(device).eval()
    return model, tokenizer
