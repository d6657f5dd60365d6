"""The tests, laid out by layer and backend.

* ``application/``: applications, the factory, settings, bad input, security;
* ``persistence/``: what every backend shares (the in-memory recorders, the
  datastore protocol, waiting, batching);
* ``sqlite/`` and ``postgres/``: each backend's own behaviour (the recorder
  suites of :mod:`tests.support.suites` run on every backend from
  ``persistence/test_popo_recorders.py``, ``sqlite/test_recorders.py`` and
  ``postgres/test_recorders.py``);
* ``projection/``: runners, error policies, statistics, filtered positions;
* ``replicas/``: several runners of one projection, leadership, processes;
* ``faults/``: crashes, cancellation and lost connections;
* ``web/``: ASGI and FastAPI services;
* ``examples/``: the examples, as users run them;
* ``tools/``: the command line, the pytest plugin, the test server, the
  benchmarks harness;
* ``docs/``: the documentation and the README run as written.

Fixtures are in ``conftest.py``; the helpers they and the tests share are
in :mod:`tests.support`.
"""
