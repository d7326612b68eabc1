"""The reproduction study: a grid of training runs, each through the real ``bcat`` commands.

    grid.py      the study configuration (arms x seeds), its validation and the time plan
    commands.py  the ``bcat`` command lines a run is made of (shared with ``bcat demo``)
    runner.py    runs the grid resumably, one ``bcat`` subprocess per step; copies each finished
                 run's small outputs into the results folder and writes ``<run>.json``
    results.py   what a run's JSON holds; seeds pooled; learning curves
    report.py    REPORT.md / REPORT.html: tables, charts, comparisons with the shuffled twin, the
                 statement against the paper
"""
