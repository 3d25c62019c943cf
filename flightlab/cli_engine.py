"""The engine's options of ``flightlab serve_offline``: who answers, with what
resources, and how PostgreSQL sources are read."""

from __future__ import annotations

import argparse
from pathlib import Path

from flightlab.engine.postgres.settings import PLANS, PlanCosts, PostgresSettings
from flightlab.engine.settings import EngineMode, EngineSettings


def add_engine_arguments(serve: argparse.ArgumentParser) -> None:
    serve.add_argument(
        "--engine",
        choices=[mode.value for mode in EngineMode],
        default=EngineMode.AUTO.value,
        help="who answers retrievals: auto (flightlab's DuckDB engine where it gives the "
        "store's own answers, Feast's store elsewhere), flightlab (the engine wherever it "
        "can, also on the dask store), feast (always the Feast store); default %(default)s",
    )
    serve.add_argument(
        "--engine-threads",
        type=int,
        metavar="N",
        help="DuckDB threads per engine request (default: one per core)",
    )
    serve.add_argument(
        "--engine-memory-limit",
        metavar="SIZE",
        help="DuckDB memory limit per engine request, e.g. 2GB; beyond it joins spill "
        "(default: 80%% of RAM split among --workers)",
    )
    serve.add_argument(
        "--spill-dir",
        type=Path,
        metavar="DIR",
        help="where engine joins over the memory limit spill, and Spark writes results "
        "to stream when its store has no staging_location (default: a temp folder)",
    )
    serve.add_argument(
        "--spill-max-size",
        metavar="SIZE",
        help="spill space one engine request may use at most, e.g. 20GB; a request over "
        "it fails, naming the spill folder (default: 90%% of its disk's free space)",
    )
    postgres = PostgresSettings()
    serve.add_argument(
        "--postgres-pool-size",
        type=int,
        default=postgres.pool_size,
        metavar="N",
        help="connections the engine opens to a PostgreSQL offline store at most "
        "(default %(default)s; requests beyond it wait)",
    )
    serve.add_argument(
        "--postgres-statement-timeout",
        type=float,
        metavar="SECONDS",
        help="how long one engine query may run in PostgreSQL (default: no limit)",
    )
    serve.add_argument(
        "--postgres-plan",
        choices=PLANS,
        default=postgres.plan,
        help="how the engine joins PostgreSQL sources: auto (chosen per request from "
        "EXPLAIN), pit (in PostgreSQL), fetch or seek (the window fetched, joined in "
        "DuckDB); default %(default)s",
    )
    serve.add_argument(
        "--postgres-plan-costs",
        default="",
        metavar="NAME=VALUE,...",
        help="the planner's constants, e.g. probe_s=4e-6,fetch_fixed_s=0.2 (see the README)",
    )
    serve.add_argument(
        "--postgres-application-name",
        default=postgres.application_name,
        metavar="NAME",
        help="the application_name of the engine's PostgreSQL sessions (default %(default)s)",
    )


def engine_settings(args: argparse.Namespace) -> EngineSettings:
    settings = EngineSettings(
        mode=EngineMode(args.engine),
        threads=args.engine_threads,
        memory_limit=args.engine_memory_limit,
        spill_dir=args.spill_dir,
        spill_max_size=args.spill_max_size,
        postgres=PostgresSettings(
            pool_size=args.postgres_pool_size,
            statement_timeout=args.postgres_statement_timeout,
            plan=args.postgres_plan,
            costs=PlanCosts.parse(args.postgres_plan_costs),
            application_name=args.postgres_application_name,
        ),
    )
    from flightlab.engine.database import check_resources

    check_resources(settings)  # e.g. a memory limit DuckDB cannot read
    return settings
