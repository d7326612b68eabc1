"""Load a causal LM and its tokenizer from a local directory, add LoRA, save as safetensors.

Only local files are read (the CLI sets the Hugging Face offline flags), only safetensors weights
are accepted (a directory whose weights are pickled, ``pytorch_model.bin``, ``adapter_model.bin``,
``*.pt`` and the like, is refused before anything opens them; pickled files beside safetensors
weights are never read), and ``trust_remote_code`` stays off unless the config turns it on. Training
(:func:`load_model`) and evaluation (:func:`load_for_eval`) load the same way; ``option`` names the
setting the path came from (``model.path``, ``model``) in error messages (:class:`bcat.errors.OptionError`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from bcat.config import ModelConfig
from bcat.errors import ConfigError, OptionError

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
        raise OptionError.about(option, f": directory not found: {path} (models load from local directories only)")
    if not (p / "config.json").exists() and not (p / "adapter_config.json").exists():
        raise OptionError.about(option, f": {p} has no config.json: not a Hugging Face model directory")
    _refuse_pickled_weights(p, option)
    _refuse_outside_links(p, option)
    return p


def _refuse_outside_links(path: Path, option: str) -> None:
    """Refuse a file of the model directory that is a symbolic link leading outside it (or nowhere): what
    a model directory holds should be what gets loaded. Links into the same Hugging Face cache repository
    (``snapshots/REV/FILE -> ../../blobs/HASH``) are how that cache stores every model, and are allowed."""
    roots = [path.resolve()]
    if path.parent.name == "snapshots":
        roots.append((path.parent.parent / "blobs").resolve())
    for f in sorted(path.iterdir()):
        if not f.is_symlink():
            continue
        target = f.resolve()
        if not target.exists():
            raise OptionError.about(option, f": {f} is a symbolic link to {target}, which does not exist")
        if not any(target.is_relative_to(root) for root in roots):
            raise OptionError.about(option, f": {f} is a symbolic link to {target}, outside the model directory; "
                                            "copy the file into the directory (or load the model from where the file is)")


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
"""Weight files that torch and PEFT read with an unpickler: a crafted one can run code when loaded."""


def _refuse_pickled_weights(path: Path, option: str) -> None:
    """Refuse a model or adapter directory whose weights exist only as pickles, before any loader sees
    it: transformers and PEFT would otherwise fall back to ``torch.load`` on them."""
    adapter = (path / "adapter_config.json").exists()
    has_safetensors = (path / "adapter_model.safetensors").exists() if adapter else any(path.glob("*.safetensors"))
    if has_safetensors:
        return
    pickles = sorted(f.name for f in path.iterdir() if f.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        kind = "adapter" if adapter else "model"
        raise OptionError.about(
            option, f": cannot load safetensors weights from {path}: its {kind} weights are pickled "
            f"({', '.join(pickles)}), which bcat never loads (unpickling can run code); convert them to "
            "safetensors with the tool that made them (save_pretrained(..., safe_serialization=True))"
        )


def base_model_dir(path: Path, option: str = "model.path") -> Path:
    """The base model under a LoRA adapter directory (``path`` itself for a full model)."""
    adapter_cfg = path / "adapter_config.json"
    if not adapter_cfg.exists():
        return path
    base = json.loads(adapter_cfg.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise OptionError.about(option, f": {adapter_cfg} has no base_model_name_or_path; cannot find the base model")
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
        raise OptionError.about(option, f": {path} has no usable tokenizer ({e})") from None
    if tokenizer.pad_token_id is None:
        # bcat masks padding with attention and target masks and never trains on pad positions, so
        # reusing EOS as pad cannot hide the EOS at the end of completions.
        if tokenizer.eos_token_id is None:
            raise OptionError.about(option, f": the tokenizer in {path} has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
        log.info("bcat: the tokenizer has no pad token; using EOS (%r) as pad", tokenizer.eos_token)
    return tokenizer


def _refuse_remote_code(error: Exception, path, option: str) -> None:
    """Turn transformers' "needs trust_remote_code" refusal into one clear line (the code never ran)."""
    if "trust_remote_code" in str(error):
        problem = (f": {path} needs to run Python code shipped with the model (auto_map in its config); bcat does not "
                   "run it unless you set ")
        if option == "model.path":  # a training config
            raise OptionError.about(option, problem + "model.trust_remote_code=true") from None
        raise OptionError("{" + option + "}" + problem + "{trust_remote_code}", option, "trust_remote_code") from None


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


@dataclass(frozen=True)
class Precision:
    """How a training run stores and computes: ``compute`` is the dtype of the matmuls (``torch.autocast``
    when it is not fp32), ``storage`` the dtype the model's weights are loaded in.

    What the field does for bf16 training (Hugging Face ``Trainer(bf16=True)`` with TRL and peft,
    LitGPT's ``bf16-mixed``): every weight that is TRAINED stays fp32 (the "master weights": an AdamW
    update of a few 1e-5 is below half a bf16 ulp of a weight near 1 and would round away), the
    matmuls run in bf16 under ``torch.autocast`` (what accelerate's ``mixed_precision="bf16"`` turns
    on), and the losses are reduced in fp32. With LoRA the frozen base is also STORED in bf16 (half
    the weight memory, no cast per forward) while peft keeps the adapters in fp32
    (``autocast_adapter_dtype``); both together, since bf16 storage alone would leave full
    fine-tuning without fp32 master weights and autocast alone would keep a frozen fp32 base.
    ``bcat`` applies the autocast inside :class:`bcat.model.forward.PolicyForward` rather than through
    accelerate's model wrapper, so the DPO reference, the start-up checks and the hidden-state
    statistics run in the same precision as the policy, and the losses (computed outside the forward)
    stay fp32.

    >>> Precision(torch.float32, torch.float32).autocast, Precision(torch.bfloat16, torch.float32).autocast
    (False, True)
    """

    compute: torch.dtype
    """Dtype of the forward's matmuls."""
    storage: torch.dtype
    """Dtype the weights are loaded in."""

    @property
    def autocast(self) -> bool:
        """Whether the forward runs under ``torch.autocast(dtype=compute)``."""
        return self.compute != torch.float32


def training_precision(cfg: ModelConfig, device: torch.device) -> Precision:
    """The :class:`Precision` of a training run: fp32 throughout when ``model.dtype`` resolves to fp32 (the
    CPU default: nothing changes there); else bf16 compute with fp32 trained weights and, with LoRA, a
    bf16 frozen base. fp16 is refused: it needs loss scaling, which bcat's loop does not do.

    >>> training_precision(ModelConfig(dtype="auto"), torch.device("cpu"))
    Precision(compute=torch.float32, storage=torch.float32)
    >>> training_precision(ModelConfig(dtype="bfloat16", lora=False), torch.device("cpu"))
    Precision(compute=torch.bfloat16, storage=torch.float32)
    >>> training_precision(ModelConfig(dtype="bfloat16", lora=True), torch.device("cpu"))
    Precision(compute=torch.bfloat16, storage=torch.bfloat16)
    """
    compute = pick_dtype(cfg.dtype, device)
    if compute == torch.float16:
        raise ConfigError("model.dtype=float16 is not supported for training (fp16 gradients need loss scaling, "
                          "which bcat train does not do); use bfloat16 or float32")
    return Precision(compute, compute if cfg.lora else torch.float32)


def load_model(cfg: ModelConfig, device: torch.device | None = None, option: str = "model.path",
               dtype: torch.dtype | None = None):
    """Base model (safetensors only) from ``cfg.path``; a saved LoRA adapter is loaded on its base.

    ``dtype``: the weights' dtype (default: ``cfg.dtype`` resolved by :func:`pick_dtype`)."""
    from transformers import AutoModelForCausalLM

    device = device or torch.device("cpu")
    path = resolve_model_dir(cfg.path, option)
    dtype = dtype or pick_dtype(cfg.dtype, device)
    base_path = base_model_dir(path, option)
    try:
        attention = {} if cfg.attn_implementation == "auto" else {"attn_implementation": cfg.attn_implementation}
        model = AutoModelForCausalLM.from_pretrained(
            base_path, dtype=dtype, trust_remote_code=cfg.trust_remote_code, use_safetensors=True, **attention
        )
    except OSError as e:
        raise OptionError.about(option, f": cannot load safetensors weights from {base_path} ({e})") from None
    except ValueError as e:
        _refuse_remote_code(e, base_path, option)
        raise OptionError.about(option, f": cannot load the model in {base_path} ({str(e).splitlines()[0]})") from None
    if base_path != path:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, path, is_trainable=False)
        log.info("bcat: loaded adapter %s on %s", path, base_path)
    return model.to(device)


def load_for_eval(path: str, trust_remote_code: bool = False, device: str = "cpu", dtype: str = "auto"):
    """``(model, tokenizer)`` for evaluation, an adapter merged into its base for speed, eval mode.

    ``dtype`` as ``model.dtype``: ``auto`` is fp32 on the CPU (bf16 matmuls are two orders of
    magnitude slower on CPUs without AVX-512 BF16) and bf16 on a GPU that has it (half the bytes read
    per decode step; greedy answers can differ from fp32's where the top two logits are within bf16
    rounding, which ``bench/gpu_check.py`` measures)."""
    cfg = ModelConfig(path=path, dtype=dtype, trust_remote_code=trust_remote_code)
    model = load_model(cfg, torch.device(device), option="model")
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return model.eval(), load_tokenizer(path, trust_remote_code, option="model")


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
    smallest = min((min(m.in_features, m.out_features), name) for name, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in cfg.lora_target_modules)
    if cfg.lora_r > smallest[0]:
        # A rank above a layer's smaller side adds parameters and memory but no capacity.
        raise ConfigError(f"model.lora_r={cfg.lora_r} exceeds the smaller dimension ({smallest[0]}) of the targeted "
                          f"layer {smallest[1]}; choose a rank of at most {smallest[0]}")
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.lora_target_modules), task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def num_layers(config) -> int:
    """``L``, the transformer layers of a model config (of its text decoder, for a multimodal one): its
    ``hidden_states`` are indexed 0 (the embedding output) to ``L``."""
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    return int(text.num_hidden_layers)


def middle_layer(config) -> int:
    """Index into ``hidden_states`` of the middle transformer layer: the default aligned layer, and the
    default layer the retrieval check probes."""
    return num_layers(config) // 2


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
    count = num_layers(config)
    bad = [i for i in layers if not 0 <= i <= count]
    if bad:
        raise ConfigError(f"{option} has {bad}: this model has {count} transformer layers, so valid "
                          f"indices into hidden_states are 0 (embeddings) to {count}")
    return tuple(layers)
