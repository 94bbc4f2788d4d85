"""``didi serve``: a small local HTTP server over loaded pipelines, and one page that shows generation step by step.

:mod:`.api` validates requests and runs them on a model; :mod:`.app` is the Starlette application (JSON API, a
stream of intermediate states, the page of :mod:`.page`) and its uvicorn runner. Needs the ``serve`` extra.
"""
