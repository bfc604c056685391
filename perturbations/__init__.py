"""Built-in perturbation plugins (installed as ``petseg_bench_perturbations``)."""

#: The family of the seed study's eight perturbations (see ``PerturbationSpec.family``):
#: their corruption errors are averaged together, apart from any other family's.
SEED_FAMILY = "seed"
SEED_FAMILY_LABEL = "Seed study's eight"
