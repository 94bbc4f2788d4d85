"""``didi eval`` as in the paper, in three modules: :mod:`.metrics` (gen-PPL, entropy, likelihood, timed
sampling: plain functions), :mod:`.report` (rows, the Markdown table, JSON and the plot) and :mod:`.runner`
(:class:`~.runner.EvalConfig` and :func:`~.runner.evaluate`: models x budgets into a report)."""
