"""inspectq's Celery workers: one task, ``inspectq.inspect``, runs an image through its stages.

The stages, in the order an image travels, each in the module named for it: ``cache`` (the
inference cache: same bytes, same model, answered once), ``fetch`` (S3 get), ``preprocess``
(decode and tiles), ``infer`` (Triton), ``postprocess`` (stitch and regions), ``render``
(the mask PNG, stored), decide (``inspectq.result.decide``), ``record`` (the one outcome to
S3 and Redis), ``alert`` (defect-rate alerts). ``tasks`` runs them in order with the clients
of ``services``; ``app`` builds the Celery app and ``main`` is the entry module of the worker
command line. ``deadletter`` and ``reconcile`` are the recovery libraries behind
``inspectq deadletter`` and ``inspectq reconcile``.
"""
