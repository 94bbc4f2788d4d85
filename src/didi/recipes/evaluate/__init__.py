"""``didi eval`` as in the paper: :mod:`.metrics` (gen-PPL, entropy, likelihood, timed sampling, MAUVE: plain
functions), :mod:`.quality` (repetition, diversity, copy rate, robust gen-PPL summaries), :mod:`.markov` (the exact
metrics of Markov-language runs), :mod:`.references` (validation data, protein references, held-out text, the
training-split copy index), :mod:`.scoring` (a set of samples into a row), :mod:`.report` (rows, frontiers, JSON),
:mod:`.tables` (the Markdown tables), :mod:`.plots`, :mod:`.files` (rows of sample files), :mod:`.resume` (rows
saved as they finish) and :mod:`.runner` (:class:`~.runner.EvalConfig` and :func:`~.runner.evaluate`: models x
budgets into a report); :mod:`.conditional` adds the rows of ``--prefix-tokens``."""
