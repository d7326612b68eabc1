"""Steps 4 and 5, losses and training.

- :mod:`~bcat.training.losses`: pure loss functions, each with its equation (SFT, DPO, ORPO, the
  hidden-state and output alignment terms);
- :mod:`~bcat.training.objectives`: the total loss of one micro-batch from one forward;
- :mod:`~bcat.training.reference`: DPO reference log-probs, precomputed and cached on disk;
- :mod:`~bcat.training.checkpoint`: atomic, resumable checkpoints;
- :mod:`~bcat.training.outputs`: the output directory, checked before any work;
- :mod:`~bcat.training.loop`: the training loop: preparing a run, then running it in one function.
"""
