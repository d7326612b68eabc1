"""Prompt/completion boundary, EOS, no doubled BOS, and the length policy."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from bcat.data.records import Record
from bcat.data.tokenization import tokenize_record
from bcat.errors import DataError


@pytest.fixture(scope="module")
def tok(tiny_chat_model_dir):
    return AutoTokenizer.from_pretrained(tiny_chat_model_dir)


def rec(prompt, *completions):
    return Record("g", "en", prompt, tuple(completions), source="f.jsonl", line=7)


def test_plain_boundary_is_exact(tok):
    ex = tokenize_record(rec("Question: how long?", " 24 months"), 0, tok, 128)
    assert ex.prompt_ids == tok("Question: how long?")["input_ids"]
    assert ex.prompt_ids[0] == tok.bos_token_id and ex.prompt_ids[1] != tok.bos_token_id
    assert ex.completions[0] == tok(" 24 months", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


def test_chat_template_no_double_bos_and_eos_once(tok):
    prompt = [{"role": "user", "content": "How long?"}]
    chosen = [{"role": "assistant", "content": "24 months"}]
    ex = tokenize_record(rec(prompt, chosen, [{"role": "assistant", "content": "12"}]), 0, tok, 128)
    assert ex.prompt_ids.count(tok.bos_token_id) == 1
    full = tok.apply_chat_template(prompt + chosen, tokenize=False)
    assert tok.decode(ex.prompt_ids + ex.completions[0]) == full
    assert ex.completions[0][-1] == tok.eos_token_id and ex.completions[0].count(tok.eos_token_id) == 1


def test_long_prompt_trimmed_from_the_left_keeping_bos(tok):
    long_prompt = "passage " * 200 + "Question: how long?"
    ex = tokenize_record(rec(long_prompt, " 24"), 0, tok, 64)
    assert ex.length <= 64 and ex.prompt_trimmed > 0
    assert ex.prompt_ids[0] == tok.bos_token_id
    assert ex.prompt_ids[-3:] == tok(long_prompt)["input_ids"][-3:]  # the question at the end survives


def test_completion_that_does_not_fit_is_an_error(tok):
    with pytest.raises(DataError, match="never cut") as err:
        tokenize_record(rec("Q", "short", "word " * 100), 0, tok, 32)
    assert (err.value.line, err.value.field) == (7, "rejected")


def test_a_chat_template_that_refuses_the_messages_is_a_data_error(tok):
    refusing = tok.chat_template
    tok.chat_template = "{{ raise_exception('Conversation roles must alternate user/assistant') }}"
    try:
        with pytest.raises(DataError, match="roles must alternate") as err:
            tokenize_record(rec([{"role": "assistant", "content": "Hi"}], [{"role": "assistant", "content": "24"}]),
                            0, tok, 128)
        assert (err.value.line, err.value.field) == (7, "completion")
    finally:
        tok.chat_template = refusing
