"""Step 1, data: parallel records in, validated before any work.

- :mod:`~bcat.data.records`: records (prompt + completion or chosen/rejected, ``group``, ``lang``),
  read from JSONL / Parquet / ``datasets``, every error naming the file, line and field;
- :mod:`~bcat.data.tokenization`: prompt and completion tokenized apart (exact boundary, one BOS/EOS);
- :mod:`~bcat.data.rag`: multilingual RAG QA items and their prompt (shared by pairs and evaluation);
- :mod:`~bcat.data.normalize`: answers in a normal form, in every script (shared by the data builder
  and the scorer);
- :mod:`~bcat.data.udhr`: the vendored Universal Declaration of Human Rights;
- :mod:`~bcat.data.kb`: the bundled multilingual knowledge-base QA data and its preference pairs.
"""
