"""The remote code of a Transformers-native ``didi export`` (``trust_remote_code=True``), kept as package modules so
that ruff and the tests see it; didi itself never imports it. :mod:`didi.interop.remote_code` writes
``configuration_didi.py`` as it is and assembles ``modeling_didi.py`` from :mod:`.modeling_didi` and the verbatim
source of the didi modules it imports."""
