"""Tune the built-in model (Gemma 3 270M) with TRL's DPOTrainer on batches of whole language groups plus
bcat's alignment terms. Data: DPO pairs from bcat's bundled multilingual RAG train split (English and the
six seen languages).   python examples/trl_dpo.py [STEPS] [OUTPUT_DIR] [MODEL]   (MODEL: a model directory,
default the built-in model)
"""

import sys

import datasets
import torch
from peft import LoraConfig
from trl import DPOConfig

from bcat.bundled import resource
from bcat.config import AlignmentConfig, BatchConfig, ModelConfig
from bcat.data.kb.pairs import make_pairs, read_qa
from bcat.integrations.trl import BCATDPOTrainer
from bcat.languages import ANCHOR, SEEN
from bcat.model.loading import load_model, load_tokenizer

steps = int(sys.argv[1]) if len(sys.argv) > 1 else 20
output = sys.argv[2] if len(sys.argv) > 2 else "runs/trl-dpo"
model = ModelConfig(path=sys.argv[3] if len(sys.argv) > 3 else "builtin:gemma3-270m")
qa = [r for r in read_qa(resource("kb/train.jsonl")) if r["lang"] in (ANCHOR, *SEEN)]
columns = ("group", "lang", "prompt", "chosen", "rejected")  # TRL's pair columns + bcat's group and language
made = make_pairs(qa)
anchored = {p["group"] for p in made if p["lang"] == ANCHOR}  # every group needs its English pair
pairs = datasets.Dataset.from_list([{c: p[c] for c in columns} for p in made if p["group"] in anchored])

# 3e-4 moves the model within these few steps; for a real run take about 2e-5: DPO at 1e-4 collapsed
# over 120 steps in bcat's study (results/study/README.md, "DPO learning rate").
trainer = BCATDPOTrainer(
    model=load_model(model), processing_class=load_tokenizer(model.path), train_dataset=pairs,
    args=DPOConfig(output_dir=output, max_steps=steps, learning_rate=3e-4, lr_scheduler_type="constant",
                   logging_steps=1, save_strategy="no", report_to=[],
                   bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported()),  # fp32 on CPU
    peft_config=LoraConfig(r=model.lora_r, lora_alpha=model.lora_alpha, target_modules=model.lora_target_modules),
    batch=BatchConfig(groups_per_batch=2, languages_per_group=2),  # 2 items x (English + 2 languages)
    # InfoNCE on the middle layer + output agreement (both are off by default: README, "Defaults"); the
    # trainer fits the hidden term's standardisation on the initial model when it is built, as `bcat train` does.
    alignment=AlignmentConfig(hidden_weight=3.0, output_weight=2.0),
)
trainer.train()
trainer.model.save_pretrained(output)  # the LoRA adapter, safetensors (save_model would also pickle the args)
trainer.processing_class.save_pretrained(output)
