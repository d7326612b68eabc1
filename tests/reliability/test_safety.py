"""Safety: weights only from safetensors, torch files only with ``weights_only=True``, no code shipped with a
model unless ``model.trust_remote_code=true``, YAML through ``safe_load``, no network at run time, and no
write outside the output directory whatever the data or config says."""

from __future__ import annotations

import ast
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import parallel_records, write_jsonl
from reliability.support import (
    REPO,
    Result,
    assert_clean_failure,
    copy_model,
    edit_json,
    guard_env,
    guard_events,
    run_cli,
    tree,
)
from safetensors.torch import load_file

from bcat.cli import main

PACKAGE = REPO / "bcat"


class _Payload:
    """Unpickling this creates ``path``: proof that a pickle was loaded unsafely."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def data(tmp_path):
    return write_jsonl(tmp_path / "d.jsonl", parallel_records(2))


# ------------------------------------------------------------------------------------------------ weights


def test_model_with_only_a_pickled_checkpoint_is_refused(tmp_path, train, data, tiny_model_dir, capsys):
    marker = tmp_path / "PWNED"
    model = copy_model(tiny_model_dir, tmp_path / "m")
    (model / "model.safetensors").unlink()
    with open(model / "pytorch_model.bin", "wb") as f:
        pickle.dump({"model.embed_tokens.weight": _Payload(marker)}, f)
    out = tmp_path / "out"
    assert_clean_failure(train(out, data, model=model), "model.path: cannot load safetensors weights")
    assert not marker.exists() and not out.exists()
    # evaluation loads the same way
    rc = main(["eval", "--model", str(model), "--output", str(out), "--limit", "1"])
    captured = capsys.readouterr()
    assert_clean_failure(Result(rc, captured.out, captured.err), "--model: cannot load safetensors weights")
    assert not marker.exists() and not out.exists()


@pytest.mark.parametrize("pickled", ["adapter_model.bin", "adapter_model.pt"])
def test_adapter_with_only_pickled_weights_is_refused_before_it_is_read(tmp_path, train, data, capsys, monkeypatch,
                                                                         pickled):
    """A LoRA adapter folder whose weights are a pickle: neither training on it nor evaluating it opens the
    file (PEFT would fall back to ``torch.load`` on ``adapter_model.bin``)."""
    run = tmp_path / "run"
    assert train(run, data, steps=1).rc == 0
    adapter = run / "model"
    weights = load_file(adapter / "adapter_model.safetensors")
    (adapter / "adapter_model.safetensors").unlink()
    torch.save(weights, adapter / pickled)
    opened = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: opened.append(a) or real_load(*a, **k))
    out = tmp_path / "out"
    assert_clean_failure(train(out, data, model=adapter), "model.path: cannot load safetensors weights",
                         f"adapter weights are pickled ({pickled})")
    rc = main(["eval", "--model", str(run), "--output", str(out), "--limit", "1"])
    captured = capsys.readouterr()
    assert_clean_failure(Result(rc, captured.out, captured.err), "--model: cannot load safetensors weights",
                         f"({pickled})")
    assert opened == [] and not out.exists()


def test_pickles_beside_safetensors_weights_are_never_read(tmp_path, train, data, tiny_model_dir, monkeypatch):
    """A model folder with a stray pickle next to its safetensors (an optimizer state, an old checkpoint) trains
    from the safetensors; the pickle is not opened."""
    marker = tmp_path / "PWNED"
    model = copy_model(tiny_model_dir, tmp_path / "m")
    for name in ("optimizer.pt", "pytorch_model.bin", "rng_state.pth"):
        with open(model / name, "wb") as f:
            pickle.dump({"x": _Payload(marker)}, f)
    opened = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: opened.append(a))
    assert train(tmp_path / "out", data, model=model, steps=1).rc == 0
    assert opened == [] and not marker.exists()


def _calls(name: str):
    """(file, call node) for every call of ``*.name(...)`` in the package."""
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == name:
                yield path.relative_to(REPO), node


def _keyword(node: ast.Call, name: str):
    for kw in node.keywords:
        if kw.arg == name:
            return kw.value
    return None


def test_source_reads_torch_files_with_weights_only_and_never_unpickles():
    """No pickle is read back: checkpoints are safetensors + JSON (no ``torch.load`` is needed at all); any
    ``torch.load`` would have to say ``weights_only=True``; accelerate's ``load_state`` (which unpickles objects
    registered for checkpointing) and torch.distributed.checkpoint's reader (a pickled ``.metadata``) are not used."""
    loads = list(_calls("load"))
    for path, node in loads:
        base = node.func.value
        if isinstance(base, ast.Name) and base.id == "torch":
            value = _keyword(node, "weights_only")
            assert isinstance(value, ast.Constant) and value.value is True, f"{path}:{node.lineno}"
    for path, node in loads + list(_calls("loads")) + list(_calls("unsafe_load")):
        base = node.func.value
        if isinstance(base, ast.Name):
            assert base.id not in ("pickle", "dill", "cloudpickle", "marshal"), f"{path}:{node.lineno}"
            if base.id == "yaml":  # safe_load, or load with bcat's strict loader (a SafeLoader subclass)
                loader = _keyword(node, "Loader")
                assert node.func.attr == "safe_load" or (isinstance(loader, ast.Name) and loader.id == "StrictYamlLoader"), \
                    f"{path}:{node.lineno}"
    from bcat.config import StrictYamlLoader
    import yaml

    assert issubclass(StrictYamlLoader, yaml.SafeLoader)
    for name in ("load_state", "FileSystemReader", "load_custom_state"):
        assert not list(_calls(name)), name
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        assert "FileSystemReader" not in text and "import pickle" not in text, path
    for path, node in _calls("from_pretrained"):  # nobody turns remote code on by itself
        value = _keyword(node, "trust_remote_code")
        assert not (isinstance(value, ast.Constant) and value.value is True), f"{path}:{node.lineno}"


def test_weights_load_as_safetensors_only():
    """Every model load in the package (training, evaluation, export) asks for safetensors."""
    calls = [(p, n) for p, n in _calls("from_pretrained")
             if isinstance(n.func.value, ast.Name) and n.func.value.id == "AutoModelForCausalLM"]
    assert {p for p, _ in calls} >= {Path("bcat/model/loading.py"), Path("bcat/model/export.py")}
    for path, node in calls:
        value = _keyword(node, "use_safetensors")
        assert isinstance(value, ast.Constant) and value.value is True, f"{path}:{node.lineno}"


def test_checkpoints_hold_only_safetensors_and_json_and_a_pickle_in_them_is_refused(tmp_path, train, data):
    """Every file of a checkpoint is safetensors or JSON. A checkpoint file replaced by a pickle payload (what
    ``torch.save`` writes) is refused on resume with a clear error; the payload never runs."""
    out = tmp_path / "out"
    assert train(out, data, "training.save_steps=1", steps=3).rc == 0
    (out / "training_summary.json").unlink()
    ckpt = out / "checkpoints" / "step-00000002"
    assert sorted(p.name for p in ckpt.iterdir()) == ["optimizer.safetensors", "rng.safetensors", "state.json",
                                                       "trainable.safetensors"]
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    torch.save({"state": {}, "param_groups": [], "x": _Payload(marker)}, evil)
    torch.load(evil, weights_only=False)  # the payload is live: a plain torch.load runs it
    assert marker.exists()
    marker.unlink()
    for name in ("optimizer.safetensors", "trainable.safetensors", "rng.safetensors"):
        good = (ckpt / name).read_bytes()
        (ckpt / name).write_bytes(evil.read_bytes())
        result = train(out, data, "training.save_steps=1", steps=3, resume=True)
        assert_clean_failure(result, "step-00000002 cannot be read safely", "SafetensorError")
        assert not marker.exists()
        (ckpt / name).write_bytes(good)


# ----------------------------------------------------------------------------------------------- remote code


def _custom_code_model(src: Path, dst: Path, marker: Path, model_type: str) -> Path:
    model = copy_model(src, dst)
    edit_json(model / "config.json", model_type=model_type,
              auto_map={"AutoConfig": "configuration_evil.EvilConfig",
                        "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"})
    code = f"open({str(marker)!r}, 'w').close()\n"
    (model / "configuration_evil.py").write_text(
        code + "from transformers import PretrainedConfig\n\n\nclass EvilConfig(PretrainedConfig):\n"
        f"    model_type = {model_type!r}\n")
    (model / "modeling_evil.py").write_text(code)
    return model


def test_custom_code_is_refused_unless_trusted(tmp_path, train, data, tiny_model_dir):
    marker = tmp_path / "PWNED"
    model = _custom_code_model(tiny_model_dir, tmp_path / "m", marker, "bcat_evil")
    out = tmp_path / "out"
    assert_clean_failure(train(out, data, model=model), "needs to run Python code shipped with the model",
                         "model.trust_remote_code=true")
    assert not marker.exists() and not out.exists()


def test_custom_code_next_to_a_known_architecture_is_not_run(tmp_path, train, data, tiny_model_dir):
    marker = tmp_path / "PWNED"
    model = _custom_code_model(tiny_model_dir, tmp_path / "m", marker, "llama")
    assert train(tmp_path / "out", data, model=model, steps=1).rc == 0  # transformers' own Llama code
    assert not marker.exists()


def test_the_custom_code_fixture_is_live_when_trusted(tmp_path, tiny_model_dir):
    """Proof that the refusal above matters: with trust_remote_code the shipped code does run."""
    marker = tmp_path / "PWNED"
    model = _custom_code_model(tiny_model_dir, tmp_path / "m", marker, "bcat_evil")
    env, _ = guard_env(tmp_path)
    code = f"from transformers import AutoConfig; AutoConfig.from_pretrained({str(model)!r}, trust_remote_code=True)"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert marker.exists()


# ----------------------------------------------------------------------------------------------- network


def test_the_network_guard_blocks(tmp_path):
    env, events = guard_env(tmp_path, network=True)
    code = "import urllib.request\ntry:\n    urllib.request.urlopen('http://example.com', timeout=5)\nexcept OSError as e:\n" \
           "    print('blocked', e)\n"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert "blocked" in done.stdout and "bcat test guard" in done.stdout
    assert {e["kind"] for e in guard_events(events)} == {"start", "getaddrinfo"}


def assert_no_network(events):
    seen = guard_events(events)
    assert any(e["kind"] == "start" for e in seen), "the guard did not load"
    assert [e for e in seen if e["kind"] != "start"] == [], "a connection or DNS lookup was attempted"


def test_train_runs_with_the_network_blocked(tmp_path, tiny_model_dir, data):
    """No HF offline variable set by the caller: bcat sets them itself, and never opens a connection."""
    env, events = guard_env(tmp_path, network=True)
    out = tmp_path / "out"
    done = run_cli(["train", f"model.path={tiny_model_dir}", f"data.train={data}", f"training.output_dir={out}",
                    "training.max_steps=2", "batch.groups_per_batch=1", "alignment.hidden_loss=cosine",
                    "objective.name=dpo"], env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "model" / "adapter_model.safetensors").exists()
    assert_no_network(events)


def test_eval_runs_with_the_network_blocked(tmp_path, tiny_model_dir):
    qa = [{"group": f"g{g}", "lang": lang, "question": q, "passages": [f"{p} {12 * (g + 1)}."],
           "answers": [f"{12 * (g + 1)}"]}
          for g in range(2) for lang, q, p in [("en", "How long is the warranty?", "The warranty lasts"),
                                               ("fr", "Combien de temps dure la garantie ?", "La garantie dure")]]
    qa_file = write_jsonl(tmp_path / "qa.jsonl", qa)
    env, events = guard_env(tmp_path, network=True)
    out = tmp_path / "eval"
    done = run_cli(["eval", "--model", str(tiny_model_dir), "--data", str(qa_file), "--output", str(out),
                    "--max-new-tokens", "2", "--bootstrap", "20", "--batch-size", "4", "--unseen", "fr"], env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "metrics.json").exists()
    assert_no_network(events)


# ------------------------------------------------------------------------------------------ paths from input


def test_paths_in_data_never_leave_the_output_directory(tmp_path, train, tiny_model_dir, monkeypatch):
    """Group ids and extra fields that look like paths are data: every file written lies under the output
    directory (or, for DPO, is a hash-named entry of the reference cache)."""
    cwd = tmp_path / "cwd" / "a" / "b"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    cache = tmp_path / "cache"
    monkeypatch.setenv("BCAT_CACHE", str(cache))
    absolute = Path("/tmp") / f"bcat-evil-{tmp_path.name}"
    records = []
    for i, group in enumerate(["../../evil", str(absolute), "../../../../../../tmp/evil2", "evil/../../x"]):
        for r in parallel_records(1, langs=("en", "fr")):
            records.append({**r, "group": group, "output_dir": "../../evil3", "path": str(absolute),
                            "prompt": f"{r['prompt']} ({i})"})
    data = write_jsonl(tmp_path / "d.jsonl", records)
    out = tmp_path / "out"
    before = tree(tmp_path)
    result = train(out, data, "objective.name=dpo", "training.save_steps=1", "training.log_batch_items=true",
                   "training.save_merged=true", steps=3)
    assert result.rc == 0, result.err[-2000:]
    new = tree(tmp_path) - before
    assert new and all(p == "out" or p.startswith("out/") or p == "cache" or p.startswith("cache/") for p in new), new
    assert not any("evil" in p for p in new), new
    assert not absolute.exists() and not Path("/tmp/evil2").exists()
    assert tree(tmp_path / "cwd") == {"a", "a/b"}
    assert json.loads((out / "training_summary.json").read_text())["groups"] == 4
