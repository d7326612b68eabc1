"""A few steps of ``BCATDPOTrainer`` that record what each micro-batch held, on every rank.

    python trl_run.py MODEL_DIR OUT_DIR GRAD_ACCUM            (one process)
    accelerate launch --multi_gpu --num_processes 2 trl_run.py MODEL_DIR OUT_DIR GRAD_ACCUM

Writes ``OUT_DIR/rank{R}.json``: ``{"batches": [[[group, lang], ...] per micro-batch], "log": log_history}``.
Run by ``tests/integrations/test_trl.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

STEPS = 3
LANGS = ("en", "fr", "de")


def run(model_dir: str, out_dir: str, grad_accum: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for helpers
    import datasets
    from helpers import parallel_records
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig

    from bcat.config import AlignmentConfig, BatchConfig
    from bcat.integrations.trl import BCATDPOTrainer

    args = DPOConfig(output_dir=out_dir, report_to=[], use_cpu=True, bf16=False, save_strategy="no", max_steps=STEPS,
                     gradient_accumulation_steps=grad_accum, logging_steps=1, learning_rate=5e-3,
                     lr_scheduler_type="constant", disable_tqdm=True)
    trainer = BCATDPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir), args=args, processing_class=AutoTokenizer.from_pretrained(model_dir),
        train_dataset=datasets.Dataset.from_list(parallel_records(4, langs=LANGS)),
        batch=BatchConfig(mode="grouped", groups_per_batch=1),
        alignment=AlignmentConfig(hidden_weight=3.0, output_weight=2.0, hidden_loss="cosine", hidden_standardize="none"))
    batches = []
    loss = trainer.compute_loss

    def recording(model, inputs, **kwargs):
        batches.append([[g, lang] for g, lang in zip(inputs["bcat_groups"], inputs["bcat_langs"])])
        return loss(model, inputs, **kwargs)

    trainer.compute_loss = recording
    trainer.train()
    out = Path(out_dir) / f"rank{trainer.args.process_index}.json"
    out.write_text(json.dumps({"batches": batches, "log": trainer.state.log_history}))


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], int(sys.argv[3]))
