"""``kd-system bench``: throughput of the actor path, the replay store, the learner's input
pipeline and actor scaling, each against its no-overhead baseline, printed side by side as ratios;
and (``--only inference``) teacher and student latency and throughput in torch eager, TorchScript,
onnxruntime fp32 and int8, against the teacher's eager path and a numpy floor.

Files by role: ``context`` (env, teacher, student, Redis, the chunks every section shares),
``timing`` (warm-up then a timed window), ``ray_collectors`` (real collectors as Ray actors),
``actor_path``, ``store_bench``, ``learner_bench``, ``scaling``, ``inference`` (one section each;
``inference_engines`` builds and times the four engines), ``report``
(table + JSON) and ``command`` (the CLI).
"""
