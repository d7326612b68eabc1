"""Settings that would silently do nothing, impossible numbers, a full disk, a device as data, an absurd LoRA
rank and an edited metrics.json: each ends in one clear message (exit 2), not a traceback or a silent run."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest
from helpers import parallel_records, write_jsonl
from reliability.support import assert_clean_failure

from bcat.config import load_config
from bcat.errors import ConfigError


@pytest.fixture
def data(tmp_path):
    return write_jsonl(tmp_path / "d.jsonl", parallel_records(2))


@pytest.mark.parametrize("mode", ["shuffled", "no_anchor", "monolingual"])
@pytest.mark.parametrize("weight", ["hidden_weight", "output_weight", "token_kl_weight"])
def test_alignment_terms_without_whole_groups_are_refused(mode, weight):
    with pytest.raises(ConfigError, match=f"alignment.{weight} > 0 needs batch.mode=grouped: .* batch.mode={mode} "):
        load_config(None, [f"batch.mode={mode}", f"alignment.{weight}=1.0"])
    load_config(None, [f"batch.mode={mode}"])  # the mode itself, without alignment terms, is fine
    load_config(None, ["batch.mode=grouped", f"alignment.{weight}=1.0"])


def test_the_default_is_ordinary_fine_tuning_and_refuses_alignment_terms():
    assert load_config(None, []).batch.mode == "shuffled"
    with pytest.raises(ConfigError, match="set batch.mode=grouped, or alignment.hidden_weight=0"):
        load_config(None, ["alignment.hidden_weight=3"])


@pytest.mark.parametrize("argv,words", [
    (["plan", "--world-size", "0"], "argument --world-size: must be at least 1, got 0"),
    (["plan", "--steps", "-5"], "argument --steps: must be at least 1, got -5"),
    (["diagnose", "--data", "x.jsonl", "--temperature", "0"], "argument --temperature: must be a positive number"),
])
def test_impossible_numbers_are_refused_by_the_parser(capsys, argv, words):
    from bcat.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and words in capsys.readouterr().err


def test_device_as_data_is_refused(tmp_path, train, cli):
    assert_clean_failure(cli("data", "check", "/dev/zero"), "/dev/zero:", "not a regular file")
    out = tmp_path / "out"
    assert_clean_failure(train(out, "/dev/zero"), "/dev/zero:", "not a regular file")
    assert not out.exists()


def test_absurd_lora_rank_is_refused(tmp_path, train, data):
    out = tmp_path / "out"
    assert_clean_failure(train(out, data, "model.lora_r=100000"), "model.lora_r=100000 exceeds the smaller dimension")
    assert not out.exists()


def test_disk_full_while_writing_eval_outputs(tmp_path, cli, evaluated, monkeypatch):
    data, run = evaluated
    out = tmp_path / "out"
    shutil.copytree(run, out)
    before = {p: p.read_bytes() for p in out.iterdir()}

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", full)
    result = cli("score", "--data", data, "--predictions", run / "predictions.jsonl", "--output", out)
    assert_clean_failure(result, "No space left on device", "free some space")
    assert {p: p.read_bytes() for p in out.iterdir()} == before  # the previous outputs, intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing half-written beside them


def test_disk_full_during_training(tmp_path, train, data, monkeypatch):
    import bcat.training.checkpoint as checkpoint

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", full)
    assert_clean_failure(train(tmp_path / "out", data, "training.save_steps=1"), "No space left on device")


@pytest.mark.parametrize("edit,field", [
    ([], None),
    ({"per_language": 5}, "per_language"),
    ({"per_language": {"en": {"n": "three"}}}, "per_language.en.n"),
    ({"languages": {"seen": "en"}}, "languages.seen"),
    ({"ci": {"gap": "narrow"}}, "ci.gap"),
])
@pytest.mark.parametrize("command", ["score", "compare", "report"])
def test_edited_metrics_json_is_refused(tmp_path, cli, evaluated, edit, field, command):
    data, run = evaluated
    edited = tmp_path / "edited"
    shutil.copytree(run, edited)
    (edited / "metrics.json").write_text(json.dumps(edit))
    argv = {"score": ["score", "--data", data, "--predictions", edited / "predictions.jsonl", "--output", tmp_path / "o"],
            "compare": ["compare", run, edited, "--output", tmp_path / "o", "--bootstrap", "20"],
            "report": ["report", run, edited, "--output", tmp_path / "o", "--bootstrap", "20"]}[command]
    result = cli(*argv)
    assert_clean_failure(result, f"{edited / 'metrics.json'}:", "not as bcat writes it",
                         *([f"field '{field}'"] if field else []))
    assert not (tmp_path / "o").exists()


def test_a_model_file_linked_from_outside_the_model_folder_is_refused(tmp_path, tiny_model_dir):
    from bcat.model.loading import resolve_model_dir

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    weights = next(model.glob("*.safetensors"))
    outside = tmp_path / "elsewhere" / weights.name
    outside.parent.mkdir()
    weights.rename(outside)
    weights.symlink_to(outside)
    with pytest.raises(ConfigError, match="outside the model directory"):
        resolve_model_dir(str(model))
    weights.unlink()
    weights.symlink_to(tmp_path / "gone.safetensors")
    with pytest.raises(ConfigError, match="which does not exist"):
        resolve_model_dir(str(model))


def test_a_hugging_face_cache_snapshot_with_links_to_its_blobs_loads(tmp_path, tiny_model_dir):
    from bcat.model.loading import load_model, resolve_model_dir

    repo = tmp_path / "hub" / "models--org--tiny"
    snapshot, blobs = repo / "snapshots" / "abc123", repo / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    for i, f in enumerate(sorted(tiny_model_dir.iterdir())):
        if f.is_file():
            shutil.copy(f, blobs / f"blob{i}")
            (snapshot / f.name).symlink_to(Path("../../blobs") / f"blob{i}")
    assert resolve_model_dir(str(snapshot)) == snapshot
    import torch

    linked, original = (load_model(load_config(None, [f"model.path={p}", "model.lora=false"]).model, torch.device("cpu"))
                        for p in (snapshot, tiny_model_dir))
    for (name, a), (_, b) in zip(linked.state_dict().items(), original.state_dict().items()):
        assert torch.equal(a, b), name
