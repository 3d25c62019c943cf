"""What running a server as a service adds, beside answering Flight calls.

- :mod:`~flightlab.operations.options`: ``ServiceOptions``, the operator's settings;
- :mod:`~flightlab.operations.counts`: the one record of the calls answered,
  and its ``stats`` view;
- :mod:`~flightlab.operations.metrics`: the same counts as Prometheus metrics;
- :mod:`~flightlab.operations.health`: readiness, and the gRPC health service;
- :mod:`~flightlab.operations.drain`: refuse new work, let running work finish;
- :mod:`~flightlab.operations.ports`: the health and metrics side ports.

Nothing here knows Flight calls or Feast's stores: the server gives each part
what it reads.
"""
