"""What ``fit`` runs on, apart from the lesson: a run's state and its checkpoints (``run``,
``checkpoint``, ``run_folder`` and its lock, ``budget`` for stretches), the arithmetic per device
(``precision``, ``runtime``), ``fit``'s checks (``guards``), the range test's sweep (``sweep``), the
per-epoch record (``history``), the weight average (``ema``), image files and their decode cache
(``images``, ``cache``) and torchrun (``distributed``). Nothing is imported here: the modules are.
"""
