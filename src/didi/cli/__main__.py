"""``python -m didi.cli``: the ``didi`` command (as ``torchrun -m didi.cli`` runs it)."""
import sys

from .main import main

sys.exit(main())
