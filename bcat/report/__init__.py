"""Reports: the evidence of one or more eval runs as Markdown and self-contained HTML (``bcat report``)."""
