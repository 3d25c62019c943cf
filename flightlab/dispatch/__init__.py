"""Turning a decoded request into an answer: flightlab's engine or a Feast call.

Knows Feast and the engine, nothing of Flight. :class:`~flightlab.dispatch.
dispatcher.OfflineDispatcher` takes the frozen requests of
:mod:`flightlab.wire.protocol` and returns a
:class:`~flightlab.engine.results.ResultStream` or a small summary dict.

- :mod:`~flightlab.dispatch.dispatcher`: who answers each request;
- :mod:`~flightlab.dispatch.permissions`: who may read and write what;
- :mod:`~flightlab.dispatch.planning`: a retrieval's references and
  projections resolved against the registry, as local Feast does;
- :mod:`~flightlab.dispatch.checks`: what must hold before Feast's store is called;
- :mod:`~flightlab.dispatch.feast_objects`: Feast objects decoded from request bytes;
- :mod:`~flightlab.dispatch.writes`, :mod:`~flightlab.dispatch.persisting`:
  the writes flightlab makes itself, and where a persist may write;
- :mod:`~flightlab.dispatch.backends`: Spark sessions on the workers, database errors named.
"""
