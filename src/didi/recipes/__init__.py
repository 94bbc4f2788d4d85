"""Recipes over the components: training (:mod:`.train`), DiDi-Instruct distillation (:mod:`.distill`),
evaluation (:mod:`.evaluate`) and the quickstart (:mod:`.quickstart`)."""
