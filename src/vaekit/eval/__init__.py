"""Evaluation: the test ELBO (:mod:`.elbo`), the importance-sampled log-likelihood (:mod:`.likelihood`),
and both for a run folder (:mod:`.run`)."""
