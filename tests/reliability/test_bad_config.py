"""Bad configuration and bad model directories: exit 2, one message naming the config key (or the file and
line of a YAML file), nothing written."""

from __future__ import annotations

import logging

import pytest
from helpers import parallel_records, write_jsonl
from reliability.support import Result, assert_clean_failure, copy_model, edit_json

from bcat.batching.plan import build_sampler
from bcat.cli import main
from bcat.config import load_config
from bcat.data.records import load_records
from bcat.data.tokenization import tokenize_records
from bcat.errors import ConfigError
from bcat.model.loading import load_tokenizer

HIDDEN_ON = "batch.mode=grouped alignment.hidden_weight=3"  # checks that only matter with the hidden term on (off by default)

BAD_OVERRIDES = [
    ("objective.bta=0.2", ["unknown config key 'objective.bta'", "did you mean 'objective.beta'?"]),
    ("trainig.max_steps=3", ["unknown config key 'trainig.max_steps'", "did you mean 'training.max_steps'?"]),
    ("training.max_steps=ten", ["config key 'training.max_steps' has the wrong type"]),
    ("model.lora=maybe", ["config key 'model.lora' has the wrong type"]),
    ("data.languages=5", ["config key 'data.languages' has the wrong type"]),
    ("training.learning_rate=-1e-4", ["config key 'training.learning_rate' must be a positive number"]),
    ("training.learning_rate=0", ["'training.learning_rate'"]),
    ("training.learning_rate=inf", ["'training.learning_rate'"]),
    ("training.max_steps=0", ["'training.max_steps' must be a positive integer"]),
    ("training.logging_steps=0", ["'training.logging_steps'"]),
    ("training.save_steps=-1", ["'training.save_steps'"]),
    ("training.threads=-2", ["'training.threads'"]),
    ("batch.groups_per_batch=0", ["'batch.groups_per_batch' must be a positive integer"]),
    ("batch.groups_per_batch=5", ["'batch.groups_per_batch' is 5 but the data has only 4 group(s)"]),
    ("batch.mode=random", ["'batch.mode' must be one of"]),
    ("objective.name=ppo", ["'objective.name' must be one of"]),
    ("alignment.hidden_loss=l1", ["'alignment.hidden_loss'"]),
    ("data.max_length=4", ["'data.max_length' must be greater than 8"]),
    ("model.lora_dropout=1.5", ["'model.lora_dropout'"]),
    ("model.dtype=float8", ["model.dtype must be auto, float32, bfloat16 or float16"]),
    ("model.attn_implementation=flash", ["'model.attn_implementation' must be one of"]),
    ("model.dtype=float16", ["model.dtype=float16 is not supported for training"]),
    ("model.lora_target_modules=[foo_proj]", ["model.lora_target_modules", "match no linear layer"]),
    # one unmatched name among matched ones is an error too, never silently dropped
    ("model.lora_target_modules=[q_proj,foo_proj]", ["model.lora_target_modules: ['foo_proj'] match no linear layer"]),
    ("batch.languages_per_group=0", ["'batch.languages_per_group' must be positive or null, got 0"]),
    ("training.threads=0", ["'training.threads' must be positive or null, got 0"]),
    ("training.grad_ratio_steps=-1", ["'training.grad_ratio_steps'"]),
    ("alignment.hidden_standardize=whiten", ["'alignment.hidden_standardize' must be one of"]),
    ("alignment.hidden_stats_records=1", ["'alignment.hidden_stats_records' must be at least 2"]),
    # InfoNCE's negatives are the other groups' anchors: with one group per micro-batch it is always 0
    (f"{HIDDEN_ON} alignment.hidden_loss=infonce", ["alignment.hidden_loss=infonce with batch.groups_per_batch=1 is identically 0",
                                       "set batch.groups_per_batch=2 or more, or alignment.hidden_loss=cosine"]),
    # the tiny model has 4 layers: checked against its config.json before any data or weights are read
    (f"{HIDDEN_ON} alignment.hidden_layers=[2,5]", ["'alignment.hidden_layers' has [5]", "4 transformer layers",
                                       "0 (embeddings) to 4"]),
    (f"{HIDDEN_ON} alignment.hidden_layers=[0]", ["'alignment.hidden_layers' holds 0, the embedding output"]),
    ("alignment.hidden_layers=[-1]", ["'alignment.hidden_layers' must list indices into hidden_states"]),
    ("data.train=", ["config key 'data.train'"]),
    ("justaword", ["override 'justaword' must look like key=value"]),
    # the usual trainer argument names lead to bcat's key
    ("training.lr=1e-3", ["unknown config key 'training.lr'", "did you mean 'training.learning_rate'?"]),
    ("learning_rate=1e-3", ["did you mean 'training.learning_rate'?"]),
    ("per_device_train_batch_size=4", ["did you mean 'batch.groups_per_batch' (bcat sizes micro-batches in groups"]),
    ("gradient_accumulation_steps=2", ["did you mean 'training.gradient_accumulation_steps'?"]),
    ("num_train_epochs=3", ["did you mean 'training.max_steps' (bcat counts optimizer steps"]),
    ("warmup_ratio=0.1", ["did you mean 'training.warmup_steps' (a number of steps, not a fraction"]),
    ("output_dir=x", ["did you mean 'training.output_dir'?"]),
    ("max_length=128", ["did you mean 'data.max_length'?"]),
    ("training.beta=0.2", ["did you mean 'objective.beta'", "objective.orpo_lambda"]),
    ("seed=1", ["did you mean 'batch.seed' or 'training.seed'?"]),
]


@pytest.fixture
def data(tmp_path):
    return write_jsonl(tmp_path / "d.jsonl", parallel_records(4))


@pytest.mark.parametrize("override,words", BAD_OVERRIDES, ids=[b[0] for b in BAD_OVERRIDES])
def test_bad_override_is_refused(tmp_path, train, data, override, words):
    out = tmp_path / "out"
    assert_clean_failure(train(out, data, *override.split()), *words)
    assert not out.exists()


YAML_CASES = [
    ("objective:\n  bta: 0.2\n", ["unknown config key 'objective.bta'", "did you mean 'objective.beta'?"]),
    ("training:\n  max_steps: ten\n", ["config key 'training.max_steps' has the wrong type"]),
    ("training: 5\n", ["config key 'training' is a section"]),
    ("- a\n- b\n", ["the top level must be a mapping"]),
    ("training:\n  max_steps: [1\n", [":3: not valid YAML"]),
    # safe_load: a python tag is refused and never constructed (the command would create a file)
    ("training:\n  max_steps: !!python/object/apply:os.system ['touch {marker}']\n",
     [":2: not valid YAML", "could not determine a constructor", "python/object/apply:os.system"]),
    ("model: !!python/object:bcat.config.ModelConfig {{path: x}}\n", [":1: not valid YAML"]),
]


@pytest.mark.parametrize("text,words", YAML_CASES, ids=range(len(YAML_CASES)))
def test_bad_yaml_config_is_refused(tmp_path, data, capsys, text, words):
    marker = tmp_path / "PWNED"
    config = tmp_path / "c.yaml"
    config.write_text(text.format(marker=marker), encoding="utf-8")
    out = tmp_path / "out"
    rc = main(["train", "--config", str(config), f"data.train={data}", f"training.output_dir={out}"])
    cap = capsys.readouterr()
    assert_clean_failure(Result(rc, cap.out, cap.err), str(config), *words)
    assert not out.exists() and not marker.exists()


def test_unreadable_config_files(tmp_path, capsys):
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00")
    for path, words in [(tmp_path / "none.yaml", "config file not found"), (tmp_path / "bin.yaml", "not valid UTF-8"),
                        (tmp_path, "cannot read the config file")]:
        rc = main(["train", "--config", str(path)])
        cap = capsys.readouterr()
        assert_clean_failure(Result(rc, cap.out, cap.err), str(path), words)


def test_world_size_that_leaves_a_rank_without_a_group(tmp_path, data, capsys, tiny_model_dir):
    """4 groups on 5 ranks: refused by ``bcat plan`` and by the sampler every rank of ``bcat train`` builds."""
    rc = main(["plan", "--world-size", "5", "--json", f"data.train={data}", "objective.name=dpo",
               "batch.groups_per_batch=1", "alignment.hidden_loss=cosine", f"model.path={tiny_model_dir}"])
    cap = capsys.readouterr()
    assert_clean_failure(Result(rc, cap.out, cap.err), "4 group(s) for world size 5 leaves a rank with no group")
    cfg = load_config(None, [f"data.train={data}", "objective.name=dpo", "batch.groups_per_batch=1",
                             "alignment.hidden_loss=cosine"])
    records, _ = load_records(data, "dpo")
    examples = tokenize_records(records, load_tokenizer(tiny_model_dir), 64)
    for rank in range(5):
        with pytest.raises(ConfigError, match="leaves a rank with no group"):
            build_sampler(cfg, examples, world_size=5, rank=rank)
    assert len(build_sampler(cfg, examples, world_size=4, rank=3)) == 1


def test_data_train_not_set(tmp_path, tiny_model_dir, capsys):
    rc = main(["train", f"model.path={tiny_model_dir}", f"training.output_dir={tmp_path / 'out'}"])
    cap = capsys.readouterr()
    assert_clean_failure(Result(rc, cap.out, cap.err), "data.train is not set")
    assert not (tmp_path / "out").exists()


def test_missing_model_directory_and_not_a_model(tmp_path, train, data):
    out = tmp_path / "out"
    assert_clean_failure(train(out, data, model=tmp_path / "nope"), "model.path: directory not found")
    (tmp_path / "empty").mkdir()
    assert_clean_failure(train(out, data, model=tmp_path / "empty"), "has no config.json")
    assert not out.exists()


def test_model_without_tokenizer(tmp_path, train, data, tiny_model_dir):
    model = copy_model(tiny_model_dir, tmp_path / "m")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (model / name).unlink()
    assert_clean_failure(train(tmp_path / "out", data, model=model), "has no usable tokenizer")
    assert not (tmp_path / "out").exists()


def test_tokenizer_without_pad_uses_eos_and_says_so(tmp_path, train, data, tiny_model_dir, caplog):
    model = copy_model(tiny_model_dir, tmp_path / "m")
    edit_json(model / "tokenizer_config.json", pad_token=None)
    caplog.set_level(logging.INFO, logger="bcat.model.loading")
    tok = load_tokenizer(model)
    assert tok.pad_token == tok.eos_token == "</s>" and tok.pad_token_id == tok.eos_token_id
    assert "no pad token; using EOS ('</s>') as pad" in caplog.text
    assert train(tmp_path / "out", data, model=model).rc == 0


def test_tokenizer_without_pad_or_eos_is_refused(tmp_path, train, data, tiny_model_dir):
    model = copy_model(tiny_model_dir, tmp_path / "m")
    edit_json(model / "tokenizer_config.json", pad_token=None, eos_token=None)
    assert_clean_failure(train(tmp_path / "out", data, model=model), "has neither a pad nor an EOS token")
    assert not (tmp_path / "out").exists()


# A list of strings (or integers) holds nothing else: a nested list or a mapping passed the typed
# config and crashed far later, in the model or the sampler.
NESTED_OVERRIDES = [
    ("model.lora_target_modules=[[q_proj,k_proj]]", "'model.lora_target_modules' must be a list of str"),
    ("data.languages=[[en,fr]]", "'data.languages' must be a list of str"),
    ("data.languages=[{a: 1}]", "'data.languages' must be a list of str"),
    ("training.snapshot_steps=[[1]]", "'training.snapshot_steps' must be a list of int"),
]


@pytest.mark.parametrize("override,words", NESTED_OVERRIDES, ids=[n[0] for n in NESTED_OVERRIDES])
def test_nested_value_in_a_list_is_refused(tmp_path, train, data, override, words):
    out = tmp_path / "out"
    assert_clean_failure(train(out, data, override), words)
    assert not out.exists()


LAUGHS = "data:\n  languages:\n    - &l0 en\n" + "".join(
    f"    - &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 5))
"""The "billion laughs" shape inside a valid key: every level holds 9 aliases of the one below (9**4
leaves here; a few more levels in 300 bytes expand to gigabytes)."""

LOADER_CASES = [
    # aliases: refused at the first one, before anything expands
    ("model:\n  lora_target_modules: &m [q_proj]\ndata:\n  languages: *m\n",
     [":4:", "alias", "*m"]),
    (LAUGHS, [":4:", "alias", "*l0"]),
    # duplicate keys: never silently resolved to the last one
    ("training:\n  max_steps: 3\n  learning_rate: 1e-3\n  max_steps: 5\n",
     [":4:", "duplicate key 'max_steps'", "line 2"]),
    ("training:\n  max_steps: 3\ntraining:\n  seed: 1\n", [":3:", "duplicate key 'training'", "line 1"]),
    # interpolation: OmegaConf would read the environment (or another key) into the config
    ("data:\n  train: ${oc.env:PATH}\n", [":2:", "'${oc.env:PATH}'", "interpolation"]),
    ("training:\n  output_dir: runs/${data.train}\n", [":2:", "interpolation"]),
]


@pytest.mark.parametrize("text,words", LOADER_CASES, ids=["alias", "laughs", "duplicate", "duplicate-section",
                                                           "env", "interpolation"])
def test_config_loader_refuses_aliases_duplicates_and_interpolation(tmp_path, data, capsys, tiny_model_dir, text,
                                                                    words):
    config = tmp_path / "c.yaml"
    config.write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    rc = main(["train", "--config", str(config), f"data.train={data}", f"training.output_dir={out}",
               f"model.path={tiny_model_dir}", "training.max_steps=1", "training.threads=1"])
    cap = capsys.readouterr()
    assert_clean_failure(Result(rc, cap.out, cap.err), str(config), *words)
    assert not out.exists()


@pytest.mark.parametrize("override,words", [
    ("data.train=${oc.env:PATH}", ["override 'data.train=${oc.env:PATH}'", "interpolation"]),
    ("training.output_dir=${data.train}", ["interpolation"]),
    ("data.languages=[&a en, *a]", ["override", "alias"]),
])
def test_overrides_refuse_interpolation_and_aliases(tmp_path, train, data, override, words):
    out = tmp_path / "out"
    assert_clean_failure(train(out, data, override), *words)
    assert not out.exists()
