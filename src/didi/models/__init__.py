"""Networks: the diffusion transformer (:mod:`.dit`), the causal GPT (:mod:`.gpt`) and the DiDi-Instruct
discriminator with its reward (:mod:`.discriminator`). Imports only :mod:`didi.runtime` and below; never
:mod:`didi.data`."""
