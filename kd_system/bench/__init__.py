"""``kd-system bench``: throughput of the actor path, the replay store, the learner's input
pipeline (and whether it keeps a 20x faster learner fed) and actor scaling, each against its
no-overhead baseline, printed side by side as ratios; (``--only inference``) teacher and student
latency and throughput in torch eager, TorchScript, onnxruntime fp32 and int8, against the
teacher's eager path and a numpy floor; and (``--only ceiling,system``) the hardware ceiling of
labelled states/s (raw env steps and raw teacher forwards on all cores, combined) and the whole
system against it, per teacher engine.

Files by role: ``context`` (env, teacher, student, Redis, the chunks every section shares),
``timing`` (warm-up then a timed window), ``ray_collectors`` (real collectors as Ray actors),
``actor_path``, ``store_bench``, ``learner_bench``, ``feed``, ``scaling``, ``inference``,
``ceiling``, ``system`` (one section each; ``inference_engines`` builds and times the four
engines, ``core_workers`` times loops in one process per core, ``engine_choice`` checks the
teacher engines and picks the headline one), ``report`` (table + JSON) and ``command`` (the CLI).
"""
