"""Step 2, batches: which records share a micro-batch, and how they become tensors.

- :mod:`~bcat.batching.sampler`: which records share a micro-batch and rank (the modes: shuffled, whole groups anchor first, ...);
- :mod:`~bcat.batching.plan`: the sampler a run's config builds, and the plan it yields (``bcat plan``);
- :mod:`~bcat.batching.collate`: padded or prompt-shared packed tensors of one micro-batch.
"""
