"""Fixtures for tests, benchmarks and the demo: real Feast repos, a throwaway
PostgreSQL, a loopback S3 server, processes.

- :mod:`~flightlab.testing.sample_repo`: a small real Feast repo (parquet
  sources, two entities, two feature views, an on-demand view, a feature
  service with a logging config);
- :mod:`~flightlab.testing.backend_repos`: the same repo on Feast's PostgreSQL
  and Spark stores;
- :mod:`~flightlab.testing.postgres`: a throwaway PostgreSQL cluster on a free
  loopback port (also ``python -m flightlab.testing.postgres``), how Feast
  reaches it, and table loading;
- :mod:`~flightlab.testing.s3`: a loopback S3 server (moto's server mode in
  a child process, also ``python -m flightlab.testing.s3``) that counts the
  bytes it serves and can refuse credentials or drop connections;
- :mod:`~flightlab.testing.processes`: child processes: ``feast apply``,
  ``flightlab serve_offline`` on a port it picks and reports, free ports,
  memory and CPU time from ``/proc``;
- :mod:`~flightlab.testing.faults`: the fault drills against real server
  processes (``tests/test_faults.py`` runs them small, ``scripts/faults.py``
  at full size).

Installed from a wheel, the package has no checkout around it: nothing here
looks for one. Whoever needs the checkout's files (the MNIST archive, the
demo's feature repo, ``scripts/``) passes their paths.
"""
