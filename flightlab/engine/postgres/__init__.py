"""flightlab's engine over PostgreSQL sources (a repo on Feast's ``postgres`` store).

Retrievals over ``PostgreSQLSource`` (a table or a query) are answered with
Feast's postgres store's answers, moving Arrow data both ways with ADBC
(binary COPY): :mod:`.engine` (``PostgresEngine``: which plan, what to cast),
:mod:`.connections` (one ADBC database per store config, a bounded pool),
:mod:`.source` (the reader: columns, types, the window fetched into the
request's DuckDB database), :mod:`.views` (a feature view as the postgres
store reads it), :mod:`.planner` (plan A or B, from EXPLAIN), :mod:`.pit`
(plan A: the join in PostgreSQL), :mod:`.fetch` (plan B: DuckDB's ASOF join
over the fetched windows), :mod:`.pulls`, :mod:`.entity_sql` (``entity_df``
as SQL), :mod:`.streams` (a query's batches, cancelled when dropped),
:mod:`.types` (the postgres store's answer types) and :mod:`.settings`.

Nothing here imports the driver until a request needs it: without
``adbc-driver-postgresql`` Feast's store answers, after one warning.
"""
