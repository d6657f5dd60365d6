"""Helpers shared by the test modules (no tests here).

* :mod:`tests.support.postgres`: connections, settings and factories on a
  test's own schema (the ``pg_schema`` fixture is in ``tests/conftest.py``);
* :mod:`tests.support.backends`: the ``Backend`` of the tests run on every
  backend (the ``backend`` fixture is in ``tests/conftest.py``);
* :mod:`tests.support.batches`: views counting the runner's batches;
* :mod:`tests.support.faults`: helpers of the fault tests and of
  benchmarks/soak.py;
* :mod:`tests.support.suites`: the recorder suites every backend runs;
* :mod:`tests.support.projections`: event-sourced projections several
  modules run;
* :mod:`tests.support.runners`: running several runners at once;
* :mod:`tests.support.web`: serving an ASGI app in the test's event loop;
* :mod:`tests.support.paths`: the project's root folder.
"""
