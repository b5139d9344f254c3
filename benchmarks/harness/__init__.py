"""The benchmark harness of ``scripts/benchmark*.py``, kept outside the ``mona_peft`` wheel (as PEFT keeps its
``method_comparison/``): the scripts and tests put ``benchmarks/`` on ``sys.path`` and import ``harness``.

- :mod:`.kinds`: the benchmark kinds (classification, semantic segmentation, detection, instance segmentation).
- :mod:`.runner`: the one runner: jobs, workers, resumption, the rate choice, the results file.
- :mod:`.rows`: a finished run's row per kind (classification also measures its costs).
- :mod:`.report`: ``results.md`` and ``results.png`` of any kind.
- :mod:`.speed`, :mod:`.floor`, :mod:`.timing`: the speed benchmark, Mona's floor, timing and memory helpers.
- :mod:`.cli`: the command lines of ``scripts/benchmark.py`` and ``scripts/benchmark_dense.py``.
"""
