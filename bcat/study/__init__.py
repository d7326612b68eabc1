"""The reproduction study: a grid of training runs, each through the real ``bcat`` commands.

    grid.py      the study configuration (arms x seeds), its validation, and the runs it expands to
    commands.py  the ``bcat`` command lines a run is made of (shared with ``bcat demo``)
    planning.py  the time plan: each run's estimated CPU time and what is left (``--plan``)
    selection.py the pick on dev among candidate arms (``selection.json``)
    runner.py    runs the grid resumably, one ``bcat`` subprocess per step
    recording.py copies each finished run's small outputs into the results folder, writes ``<run>.json``
    results.py   what a run's JSON holds; seeds pooled; learning curves
    report.py    REPORT.md / REPORT.html: tables, charts, comparisons with the shuffled twin, the
                 statement against the paper
"""
