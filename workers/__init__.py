"""inspectq's Celery workers: one task, ``inspectq.inspect``, runs an image through its stages.

Each stage lives in the module named for it: ``fetch`` (S3 get), ``preprocess`` (decode and
tiles), ``infer`` (Triton), ``postprocess`` (stitch and regions), ``decide`` (traffic light),
``render`` (the mask PNG), ``record`` (result to S3 and Redis), ``alert`` (defect
rate alerts). ``tasks`` runs them in order with the clients of ``services``; ``app`` builds
the Celery app and ``main`` is the entry module of the worker command line. ``deadletter``
and ``reconcile`` are ops commands.
"""
