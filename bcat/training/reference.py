"""DPO reference log-probs: computed once before training in a batched no-grad pass, cached on disk.

Before the first update the policy IS the reference (a fresh LoRA adapter adds exactly zero, so the
adapter-enabled model equals the adapter-disabled one; no second copy of the weights is loaded).
One pass over the data replaces a second forward on every training step.

The table (``[n_examples, 2]`` summed completion log-probs of chosen and rejected, fp32) is stored
as ``$BCAT_CACHE/reference/<key>.safetensors`` (default ``~/.cache/bcat``) and reused by later runs
and on resume. The key is a sha256 over everything the numbers depend on:

- ``data``: the tokenized examples (index, prompt ids, completion ids), i.e. the data exactly as
  the model reads it;
- ``tokenizer``: the tokenizer's serialised vocabulary, merges, special tokens and chat template;
- ``lengths``: ``data.max_length`` and ``data.prompt_truncation_side``;
- ``weights``: the sha256 of every ``*.safetensors`` file of the model directory (and of the base
  model for an adapter directory), plus a signature of the weights as loaded (name, shape, dtype of
  every non-adapter tensor, so a trimmed vocabulary or another dtype is a different key);
- ``extra``: whatever else the caller adds (e.g. the kept ids of a trimmed vocabulary).

File hashes are themselves cached by (path, size, mtime) in ``reference/file_hashes.json``, so a
1 GB model is read once, not at every run. A changed key is simply a different file: stale tables
are never read. Files are written to a temporary name and renamed, so a killed run leaves no half
file, and parallel ranks writing the same key are harmless.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterable, Optional

import torch

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Bumped when the meaning of the stored numbers changes; old files then stop matching."""

stats = {"hits": 0, "misses": 0}
"""Cache hits and misses in this process (tests and logs read it)."""


def cache_root() -> Path:
    """``$BCAT_CACHE`` if set, else ``~/.cache/bcat`` (the same root as the built-in model)."""
    env = os.environ.get("BCAT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "bcat"


def reference_dir() -> Path:
    return cache_root() / "reference"


# ------------------------------------------------------------------------------------------ compute


def precompute_reference(policy, examples, collator, batch_size: int = 16) -> torch.Tensor:
    """Summed completion log-probs of (chosen, rejected) for every example under the model as it is.

    Returns ``[max index + 1, 2]`` fp32 (row ``e.index``). Examples are visited in length order so
    each batch holds similar lengths (less padding); the model runs in eval mode (no dropout) and
    under ``no_grad``; the collator's layout (prompt-shared or plain) is used as is.
    """
    from bcat.training.objectives import reference_logps

    table = torch.zeros(max((e.index for e in examples), default=-1) + 1, 2)
    device = next(policy.parameters()).device
    ordered = sorted(examples, key=lambda e: e.length)
    was_training = policy.training
    policy.eval()
    try:
        for start in range(0, len(ordered), batch_size):
            chunk = ordered[start:start + batch_size]
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in collator(chunk).items()}
            logps = reference_logps(policy, batch).float().cpu()
            n = len(chunk)
            table[[e.index for e in chunk]] = torch.stack([logps[:n], logps[n:]], dim=1)
    finally:
        policy.train(was_training)
    return table


# ------------------------------------------------------------------------------------------- keys


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=True).encode()).hexdigest()


def data_fingerprint(examples: Iterable) -> str:
    """sha256 of the tokenized examples: index, prompt ids and completion ids, in order."""
    h = hashlib.sha256()
    for e in examples:
        h.update(json.dumps([e.index, e.prompt_ids, [list(c) for c in e.completions]]).encode())
        h.update(b"\n")
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of what decides the token ids: the serialised tokenizer, special tokens, chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    meta = {
        "class": type(tokenizer).__name__,
        "special": {k: str(v) for k, v in sorted(getattr(tokenizer, "special_tokens_map", {}).items())},
        "ids": [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id],
        "chat_template": getattr(tokenizer, "chat_template", None),
        "len": len(tokenizer),
    }
    return _sha([hashlib.sha256(body.encode()).hexdigest(), meta])


def file_sha256(path: Path, index_path: Optional[Path] = None) -> str:
    """sha256 of a file's bytes, remembered by (absolute path, size, mtime) in ``index_path``."""
    path = Path(path).resolve()
    st = path.stat()
    index_path = index_path or reference_dir() / "file_hashes.json"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    entry = index.get(str(path))
    if entry and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
        return entry["sha256"]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    digest = h.hexdigest()
    index[str(path)] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    try:
        index_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = index_path.with_name(f"{index_path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(index, indent=0))
        tmp.replace(index_path)
    except OSError as e:  # a read-only cache only costs the re-hash next time
        log.debug("bcat: cannot write %s: %s", index_path, e)
    return digest


def weight_files_fingerprint(model_dir: Path) -> str:
    """sha256 over the ``*.safetensors`` files of a model directory (and of its base, for an adapter)."""
    model_dir = Path(model_dir)
    dirs = [model_dir]
    adapter = model_dir / "adapter_config.json"
    if adapter.exists():
        base = json.loads(adapter.read_text()).get("base_model_name_or_path")
        if base and Path(base).is_dir():
            dirs.append(Path(base))
    parts = []
    for d in dirs:
        files = sorted(d.glob("*.safetensors"))
        parts.append([[f.name, file_sha256(f)] for f in files])
    return _sha(parts)


def _base_name(name: str) -> str:
    """A parameter's name without PEFT's wrapping, so LoRA and full runs on one base share a key."""
    name = name.removeprefix("base_model.model.")
    return name.replace(".base_layer.", ".")


def model_signature(model) -> str:
    """sha256 of (name, shape, dtype) of every non-adapter parameter and buffer as loaded in memory."""
    items = []
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if "lora_" in name:
            continue
        items.append([_base_name(name), list(t.shape), str(t.dtype)])
    return _sha(sorted(items))


def reference_key(examples, tokenizer, model, model_dir: Optional[Path], max_length: int, truncation_side: str,
                  extra: Optional[dict] = None) -> dict:
    """The components of the cache key (see the module docstring); :func:`key_digest` names the file."""
    return {
        "format": FORMAT_VERSION,
        "data": data_fingerprint(examples),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "lengths": {"max_length": max_length, "prompt_truncation_side": truncation_side},
        "weights": weight_files_fingerprint(model_dir) if model_dir is not None else None,
        "model": model_signature(model),
        "extra": extra or {},
    }


def key_digest(key: dict) -> str:
    return _sha(key)[:40]


# ------------------------------------------------------------------------------------------ cache


def load_cached(key: dict, n_rows: int, directory: Optional[Path] = None) -> Optional[torch.Tensor]:
    """The cached table for ``key``, or ``None`` (absent, unreadable, or not what the key says)."""
    from safetensors import safe_open

    path = (directory or reference_dir()) / f"{key_digest(key)}.safetensors"
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            table = f.get_tensor("logps")
    except Exception as e:  # a damaged file is recomputed, never trusted
        log.warning("bcat: ignoring unreadable reference cache %s (%s)", path, e)
        return None
    if json.loads(meta.get("key", "null")) != json.loads(json.dumps(key)) or tuple(table.shape) != (n_rows, 2):
        return None
    if not torch.isfinite(table).all():
        return None
    return table


def save_cached(key: dict, table: torch.Tensor, directory: Optional[Path] = None) -> Optional[Path]:
    """Write the table atomically; returns the path (``None`` if the cache is not writable)."""
    from safetensors.torch import save_file

    directory = directory or reference_dir()
    path = directory / f"{key_digest(key)}.safetensors"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".{path.name}.{os.getpid()}.{time.time_ns()}.tmp"
        save_file({"logps": table.contiguous().float()}, str(tmp), metadata={"key": json.dumps(key, sort_keys=True)})
        tmp.replace(path)
        return path
    except OSError as e:
        log.warning("bcat: cannot write the reference cache under %s (%s); it will be recomputed next time",
                    directory, e)
        return None


def reference_table(policy, examples, collator, key: Optional[dict], batch_size: int = 16,
                    directory: Optional[Path] = None) -> torch.Tensor:
    """Reference log-probs for ``examples``: from the cache when ``key`` matches, else computed (and cached).

    ``key=None`` disables the cache.
    """
    n_rows = max((e.index for e in examples), default=-1) + 1
    if key is not None:
        table = load_cached(key, n_rows, directory)
        if table is not None:
            stats["hits"] += 1
            log.info("bcat: reference log-probs loaded from cache (%s)", key_digest(key))
            return table
    stats["misses"] += 1
    t0 = time.time()
    table = precompute_reference(policy, examples, collator, batch_size)
    where = save_cached(key, table, directory) if key is not None else None
    log.info("bcat: reference log-probs computed in %.1fs%s", time.time() - t0,
             f" and cached at {where}" if where else "")
    return table
