"""bcat: Batch-level Cross-lingual Alignment Tuning.

The package follows the data flow; each step imports only the steps before it (``.importlinter``)::

    data/       parallel records (group, lang) -> validated Records -> token ids        (Example)
    batching/   which records share a micro-batch and rank (shuffled, or whole groups) -> padded/packed tensors
    model/      load (or the built-in Gemma) -> trim vocabulary -> one forward -> log-probs, pooled states
    training/   losses (SFT/DPO/ORPO + hidden/output alignment) -> objective -> the loop -> checkpoints
    evaluation/ greedy answers per language -> scores -> summary, OOD suite -> compare (bootstrap, McNemar)
    report/     tables + charts -> report.md / report.html;  integrations/  the TRL trainers
    study/      grids of arms x seeds run through the commands above, resumably
    cli/        ``bcat train | plan | eval | score | compare | report | data | diagnose | study | demo``:
                thin wrappers over the above

Below them all: ``errors``, ``languages`` (the anchor and language lists), ``bundled`` (where the
files bcat ships under ``bcat/resources`` are) and ``config`` (the typed run configuration; every
field documented).
"""

__version__ = "0.1.0"
