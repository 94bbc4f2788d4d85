"""Runtime plumbing under every other layer: run directories and atomic snapshots (:mod:`.checkpoint`), device,
precision and seeding helpers (:mod:`.utils`), torchrun helpers (:mod:`.distributed`). Imports only
:mod:`didi.config`, :mod:`didi.errors` and :mod:`didi.version`."""
