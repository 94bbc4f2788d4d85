"""Ready-to-use models: :mod:`.diffusion` (teachers and students), :mod:`.ar` (the AR baseline and evaluator) and
:func:`.load.load`, which picks the right one for any run directory or checkpoint."""
