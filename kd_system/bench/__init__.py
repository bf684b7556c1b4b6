"""``kd-system bench``: throughput of the actor path, the replay store, the learner's input
pipeline and actor scaling, each against its no-overhead baseline, printed side by side as ratios.

Files by role: ``context`` (env, teacher, student, Redis, the chunks every section shares),
``timing`` (warm-up then a timed window), ``ray_collectors`` (real collectors as Ray actors),
``actor_path``, ``store_bench``, ``learner_bench``, ``scaling`` (one section each), ``report``
(table + JSON) and ``command`` (the CLI).
"""
