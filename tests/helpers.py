"""Test helpers: a tiny random causal LM with a byte-level BPE tokenizer trained offline, and small parallel data."""

from __future__ import annotations

import json
from pathlib import Path

TEXT = [
    "The warranty lasts 24 months. Question: How long is the warranty? Answer: 24 months",
    "La garantie dure 24 mois. Question : Combien de temps dure la garantie ? Réponse : 24 mois",
    "Die Garantie gilt 24 Monate. Frage: Wie lange gilt die Garantie? Antwort: 24 Monate",
    "La garantía dura 24 meses. Pregunta: ¿Cuánto dura la garantía? Respuesta: 24 meses",
    "वारंटी 24 महीने की है। प्रश्न: वारंटी कितने समय की है? उत्तर: 24 महीने",
    "保証期間は24か月です。質問：保証期間はどのくらいですか？答え：24か月",
    "保修期为24个月。问题：保修期多长？答案：24个月",
    "การรับประกันมีอายุ 24 เดือน คำถาม: การรับประกันนานเท่าไร คำตอบ: 24 เดือน",
    "Bảo hành kéo dài 24 tháng. Câu hỏi: Bảo hành bao lâu? Trả lời: 24 tháng",
    "A jótállás 24 hónapig tart. Kérdés: Meddig tart a jótállás? Válasz: 24 hónap",
    "Garanția durează 24 de luni. Întrebare: Cât durează garanția? Răspuns: 24 de luni",
    "0123456789 ０１２３ ٠١٢٣ ०१२३ The model code is XR-200. Le code est XR-200.",
]

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tiny_model(out: Path, *, vocab_size: int = 600, hidden: int = 192, layers: int = 4, chat: bool = False,
                     arch: str = "llama", seed: int = 0) -> Path:
    """A ~0.2M-parameter random causal LM and its tokenizer, saved as safetensors in ``out``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXT * 4, trainer)
    from tokenizers.processors import TemplateProcessing
    tok.post_processor = TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    kind = {"llama": "llama", "qwen2": "qwen2", "gemma3": "gemma3_text"}[arch]
    config = AutoConfig.for_model(
        kind, vocab_size=len(fast), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0,
        bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, **({"head_dim": 48} if arch == "gemma3" else {}),
    )
    model = AutoModelForCausalLM.from_config(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    fast.save_pretrained(out)
    return out


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


ANSWERS = {"en": "24 months", "fr": "24 mois", "de": "24 Monate", "es": "24 meses", "hi": "24 महीने"}


def parallel_records(n_groups: int = 4, langs=("en", "fr", "de"), objective: str = "dpo") -> list[dict]:
    """Small parallel data: every group has one record per language."""
    recs = []
    for g in range(n_groups):
        for lang in langs:
            prompt = f"[{lang}] item {g}: The warranty lasts {g + 1}2 months. Question: How long? Answer:"
            rec = {"group": f"g{g}", "lang": lang, "prompt": prompt}
            if objective == "sft":
                rec["completion"] = f" {g + 1}2 {ANSWERS[lang].split()[1]}"
            else:
                rec["chosen"] = f" {g + 1}2 {ANSWERS[lang].split()[1]}"
                rec["rejected"] = f" {g + 5}0 {ANSWERS[lang].split()[1]}"
            recs.append(rec)
    return recs


# RAG QA records for `bcat eval` (group, lang, question, passages, answers)
QA = {
    "en": ("How long is the warranty?", "The warranty lasts {n} months.", "{n} months"),
    "fr": ("Combien de temps dure la garantie ?", "La garantie dure {n} mois.", "{n} mois"),
    "hi": ("वारंटी कितने समय की है?", "वारंटी {n} महीने की है।", "{n} महीने"),
    "ja": ("保証期間はどのくらいですか？", "保証期間は{n}か月です。", "{n}か月"),
    "th": ("การรับประกันนานเท่าไร", "การรับประกันมีอายุ {n} เดือน", "{n} เดือน"),
}


def qa_records(n_groups: int = 3) -> list[dict]:
    return [{"group": f"g{g}", "lang": lang, "question": q, "passages": [p.format(n=12 * (g + 1)),
             p.format(n=12 * (g + 1) + 5)], "answers": [a.format(n=12 * (g + 1))], "answer_neutral": g == 2}
            for g in range(n_groups) for lang, (q, p, a) in QA.items()]


def train_log_without_times(out: Path) -> list[dict]:
    """``out/train_log.jsonl`` without the step times: what two runs of the same steps must share bit for bit."""
    return [{k: v for k, v in json.loads(line).items() if k != "step_s"}
            for line in (out / "train_log.jsonl").read_text().splitlines()]
