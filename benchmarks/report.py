"""The benchmark's printed table and chart (its targets: targets.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from targets import MB, case_key, case_label, rate, rows_of, target_line

# Modes whose server is flightlab's: compared with Feast's server too.
FLIGHTLAB_SERVER_MODES = (
    "flightlab",
    "flightlab-stream",
    "flightlab-parquet",
    "flightlab-feast-engine",
    "flightlab-engine",
    "flightlab+feast-client",
)


def _find(results: list[dict[str, Any]], store: str, case: str, mode: str) -> dict | None:
    """A measured record (None if it was not measured or failed)."""
    for record in results:
        if (record["store"], record["case"], record["mode"]) == (store, case, mode):
            return record if "median" in record else None
    return None


def add_ratios(results: list[dict[str, Any]]) -> None:
    """``ratio_vs_local`` and, for flightlab's server, ``ratio_vs_feast``."""
    for record in results:
        if "median" not in record:
            continue
        local = _find(results, record["store"], record["case"], "local")
        if local is not None and record["mode"] != "local":
            record["ratio_vs_local"] = record["median"] / local["median"]
        feast = _find(results, record["store"], record["case"], "feast")
        if feast is not None and record["mode"] in FLIGHTLAB_SERVER_MODES:
            record["ratio_vs_feast"] = record["median"] / feast["median"]


def _mode(record: dict[str, Any]) -> str:
    """A mode, with the postgres plans it took: ``flightlab [fetch]``."""
    plans = record.get("plans")
    return f"{record['mode']} [{'/'.join(plans)}]" if plans else record["mode"]


def _mb(value: float | None) -> str:
    return "-" if not value else f"{value / MB:,.0f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _table(
    title: str, header: list[str], records: list[dict], keys, figures, right: set[int]
) -> list[str]:
    """``title``, then a row per record: ``keys(record) + figures(record)``, or
    for a failed one its keys and FAILED (``>N``: stopped at its time cap;
    ``did not finish``: at its memory cap),
    with its error under the table; the columns in ``right`` right-aligned."""
    rows, failures = [], []
    for record in records:
        row = keys(record)
        if "error" in record:
            failed = "STOPPED" if record.get("stopped") else "FAILED"
            failures.append(f"  {failed} {' '.join(row[:3])}: {record['error']}")
            shown = "did not finish" if record.get("stopped") else "FAILED"
            shown = f">{record['capped']:.0f}" if record.get("capped") else shown
            row += [shown] + [""] * (len(header) - len(row) - 1)
        else:
            row += figures(record)
        rows.append(row)
    widths = [max(len(x) for x in column) for column in zip(header, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return ["", title, line(header), line(["-" * w for w in widths]), *map(line, rows), *failures]


def format_report(document: dict[str, Any]) -> str:
    meta = document["meta"]
    out = [
        "",
        f"flightlab benchmark, {meta['date']}: {meta['machine']['cpus']} CPUs, "
        f"load average {meta['machine']['load_average_before'][0]:.2f} before, "
        f"{meta['machine']['load_average_after'][0]:.2f} after; "
        f"{meta['args']['repeats']} timed run(s) per cell, medians; "
        f"the run took {meta['duration_seconds'] / 60:.1f} min.",
        "x local: median / local in-process median (same store, case); "
        "x feast: median / (feast serve_offline + stock client) median.",
        "srv/cli peak: peak RSS (VmHWM) of the server process and of the client process "
        "during the timed calls; srv + / cli +: how far the server's / the client's RSS "
        "rose during one call. rows/s: result rows / median. [plan]: the postgres engine's "
        "plan (pit: the join in PostgreSQL; fetch, seek: the window into DuckDB).",
    ]
    out += _table(
        "Retrievals:",
        ["store", "case", "mode", "median s", "rows/s", "x local", "x feast", "srv peak MB"]
        + ["srv + MB", "cli peak MB", "cli + MB", "result MB", "rows"],
        document["results"],
        lambda r: [r["store"], r["case_label"], _mode(r)],
        lambda r: [
            f"{r['median']:.3f}",
            rate(r.get("rows_per_second")),
            _ratio(r.get("ratio_vs_local")),
            _ratio(r.get("ratio_vs_feast")),
            _mb(r.get("server_peak_rss")),
            _mb(r.get("server_call_rss")),
            _mb(r.get("client_peak_rss")),
            _mb(r.get("client_call_rss")),
            f"{r['result_bytes'] / MB:,.1f}",
            f"{r['result_rows']:,}",
        ],
        right=set(range(3, 13)),
    )
    if document["concurrency"]:
        out += _table(
            "Concurrent clients (wall time from the first call's start to the last's end):",
            ["store", "case", "server + client", "clients", "median total s"]
            + ["median per client s", "srv peak MB", "failed calls"],
            document["concurrency"],
            lambda c: [c["store"], c["case_label"], c["mode"], str(c["clients"])],
            lambda c: [
                f"{c['median_total']:.3f}",
                f"{c['median_client']:.3f}",
                _mb(c.get("server_peak_rss")),
                f"{c['failed_calls']}/{c['calls']}"
                + (f" ({c['call_errors'][0][:60]})" if c["call_errors"] else ""),
            ],
            right={3, 4, 5, 6},
        )
    if document["latency"]:
        out += _table(
            "Latency of a small retrieval, idle and with a large one in flight "
            "(the small call starts once the large one streams, or 1 s into it):",
            ["store", "server", "small rows", "large rows", "idle ms", "busy ms", "x idle"]
            + ["overlapped", "ended first", "started at", "large s"],
            document["latency"],
            lambda t: [t["store"], t["mode"], f"{t['small_rows']:,}", f"{t['big_rows']:,}"],
            lambda t: [
                f"{t['idle_median'] * 1e3:.0f}",
                f"{t['busy_median'] * 1e3:.0f}",
                f"{t['ratio']:.1f}",
                f"{sum(t['in_flight'])}/{len(t['in_flight'])}",
                f"{sum(t['ended_first'])}/{len(t['ended_first'])}",
                ", ".join(sorted(set(t["triggers"]))),
                f"{max(t['big_seconds']):.2f}",
            ],
            right={2, 3, 4, 5, 6, 10},
        )
    if document["loopback"]:
        out += _table(
            "Raw Arrow Flight loopback (in-memory table, 64k-row batches, do_get):",
            ["case", "median s", "GB/s", "result MB", "rows"],
            document["loopback"],
            lambda c: [c["case_label"]],
            lambda c: [
                f"{c['median']:.3f}",
                f"{c['gb_per_second']:.2f}",
                f"{c['result_bytes'] / MB:,.1f}",
                f"{c['result_rows']:,}",
            ],
            right={1, 2, 3, 4},
        )
    targets = document["targets"]
    for group in dict.fromkeys(t["group"] for t in targets):
        out += ["", f"{group}:"] + [target_line(t) for t in targets if t["group"] == group]
    if document["notes"]:
        out += ["", "Notes:"] + [f"  - {n}" for n in document["notes"]]
    out.append("")
    return "\n".join(out)


MODE_COLORS = {
    "local": "#4c72b0",
    "engine-limit": "#2f2f6f",
    "engine": "#8172b3",
    "flightlab": "#dd8452",
    "flightlab-stream": "#f2b880",
    "flightlab-parquet": "#c8a27a",
    "flightlab-feast-engine": "#a0522d",
    "flightlab-engine": "#e8a33c",
    "feast": "#55a868",
    "flightlab+feast-client": "#c44e52",
    "loopback": "#8c8c8c",
    "engine-disk": "#4c72b0",
    "engine-s3": "#64b5cd",
    "flightlab-disk": "#dd8452",
    "flightlab-s3": "#f2b880",
    "flightlab-partitioned-2": "#b5651d",
    "flightlab-partitioned-4": "#7f3f10",
}


def _bars(ax, groups: list, series: list[str], value, label=str) -> dict[tuple, tuple]:
    """A bar per series in each group that has a ``value(series, group)``, side
    by side; returns where each bar's top is, by (series, group)."""
    width = 0.8 / len(series)
    tops = {}
    for i, name in enumerate(series):
        for j, group in enumerate(groups):
            if (y := value(name, group)) is not None:
                tops[name, group] = (j + (i - (len(series) - 1) / 2) * width, y)
        bars = [tops[name, group] for group in groups if (name, group) in tops]
        xs, ys = [x for x, _ in bars], [y for _, y in bars]
        ax.bar(xs, ys, width, label=label(name), color=MODE_COLORS.get(name))
    ax.set_xticks(range(len(groups)))
    return tops


def _note(ax, text: str, top: tuple, **style) -> None:
    ax.annotate(text, top, textcoords="offset points", xytext=(0, 3), ha="center", **style)


def plot(document: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    results = [r for r in document["results"] if "median" in r]
    stores = list(dict.fromkeys(r["store"] for r in results))
    if not stores:
        return
    # The known modes in their order, then any other (its colour matplotlib's).
    modes = [m for m in MODE_COLORS if any(r["mode"] == m for r in results)]
    modes += sorted({r["mode"] for r in results} - set(modes))
    loopback = {c["case"]: c for c in document["loopback"] if "median" in c}
    cases = {
        s: sorted({r["case"] for r in results if r["store"] == s}, key=case_key) for s in stores
    }
    fig, axes = plt.subplots(2, max(2, len(stores)), figsize=(7 * max(2, len(stores)), 10))
    for ax, store in zip(axes[0], stores, strict=False):

        def median(mode: str, case: str, store: str = store) -> float | None:
            found = loopback.get(case) if mode == "loopback" else _find(results, store, case, mode)
            return found["median"] if found else None

        ran = [m for m in modes if any(r["mode"] == m and r["store"] == store for r in results)]
        shown = loopback and any(case in loopback for case in cases[store])
        series = ran + (["loopback"] if shown else [])
        tops = _bars(ax, cases[store], series, median)
        for case in cases[store]:
            ratio = (_find(results, store, case, "flightlab") or {}).get("ratio_vs_local")
            if ratio is not None:
                _note(ax, f"x{ratio:.2f}", tops["flightlab", case], fontsize=7)
        ax.set_xticklabels([_case_title(c) for c in cases[store]])
        ax.set_yscale("log")
        plain = FuncFormatter(lambda value, _pos: f"{value:g}")
        ax.yaxis.set_major_formatter(plain)
        low, high = ax.get_ylim()
        # Label the minor ticks only when the axis spans less than a decade.
        ax.yaxis.set_minor_formatter(plain if high / low < 10 else NullFormatter())
        ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.set_ylabel("median seconds per retrieval (log)")
        ax.set_title(f"{store} offline store (x: flightlab / local)")
        ax.grid(axis="y", alpha=0.3, which="both")
        ax.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.08))
    for ax in axes[0][len(stores) :]:
        ax.axis("off")

    ax = axes[1][0]
    concurrency = {(c["mode"], c["store"]): c for c in document["concurrency"]}
    if any("median_total" in c for c in concurrency.values()):
        kinds = list(dict.fromkeys(mode for mode, _ in concurrency))

        def total(kind: str, store: str) -> float | None:
            run = concurrency.get((kind, store))
            return None if run is None else run.get("median_total", 0)

        tops = _bars(ax, stores, kinds, total)
        for (kind, store), top in tops.items():
            c = concurrency[kind, store]
            note = f"{c['failed_calls']} calls\nfailed" if c.get("failed_calls") else ""
            if "error" in c:
                note = "hung" if "hung" in c["error"] else "failed"
            if note:
                text = note if top[1] else f"{kind}:\n{note}"
                _note(ax, text, top, fontsize=7, color="#b00000")
        first = next(iter(concurrency.values()))
        ax.set_xticklabels(stores)
        ax.set_ylabel("median total seconds")
        ax.set_title(f"{first['clients']} concurrent clients, {first['case_label']} rows each")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    else:
        ax.axis("off")

    ax = axes[1][1]
    servers = ("flightlab", "flightlab-feast-engine", "flightlab+feast-client", "feast")
    servers = [m for m in servers if m in modes]
    groups = [
        (store, case)
        for store in stores
        for case in cases[store]
        if any(_find(results, store, case, mode) for mode in servers)
    ]
    if servers:

        def peak(mode: str, group: tuple[str, str]) -> float | None:
            rss = (_find(results, *group, mode) or {}).get("server_peak_rss")
            return rss / MB if rss else None

        _bars(ax, groups, servers, peak, label=lambda mode: f"server of {mode}")
        ax.set_xticklabels([f"{s}\n{case_label(c)}" for s, c in groups], fontsize=8)
        ax.set_ylabel("server peak RSS, MB")
        ax.set_title("Server peak RSS per request (fresh server each)")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    else:
        ax.axis("off")
    for ax in axes[1][2:]:
        ax.axis("off")
    meta = document["meta"]
    fig.suptitle(
        f"flightlab benchmark ({meta['date']}, {meta['machine']['cpus']} CPUs, "
        f"{meta['args']['repeats']} run(s) per bar, medians)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _case_title(case: str) -> str:
    return "MNIST 70k x 28 arrays" if rows_of(case) is None else f"{case_label(case)} rows"
