"""The benchmark's ratios, targets, printed table and chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

MB = 1e6
# Modes whose server is flightlab's: compared with Feast's server too.
FLIGHTLAB_SERVER_MODES = (
    "flightlab",
    "flightlab-stream",
    "flightlab-feast-engine",
    "flightlab-engine",
    "flightlab+feast-client",
)
# Issue 10's targets, judged on the duckdb store at 1M entity rows (1M-row source).
ENGINE_STORE = "duckdb"
ENGINE_ROWS = 1_000_000
LIMIT_FRACTION = 0.8  # flightlab's rows/s >= this x the engine limit's
FEAST_SPEEDUP = 5.0  # flightlab's rows/s >= this x Feast's serve_offline
MNIST_LOCAL_FRACTION = 0.5  # MNIST through the server <= this x local
SERVER_RSS_FRACTION = 0.5  # streamed server RSS growth <= this x Feast server's
LATENCY_FACTOR = 3.0  # a 1k-row call with a 1M-row one in flight <= this x idle
LOCAL_RATIO_TARGET = 1.05
LOCAL_RATIO_ROWS = (100_000, 1_000_000)
# "well under the result size": the streaming client's call may grow its RSS by
# at most this fraction of the result, judged where the result is big enough
# (>= STREAM_MIN_RESULT bytes) to stand out of a Python process's RSS noise.
STREAM_RSS_FRACTION = 0.5
STREAM_MIN_RESULT = 50 * MB
NOISE = 1.02  # a miss by less than this factor is flagged as within noise


def _find(results: list[dict[str, Any]], store: str, case: str, mode: str) -> dict | None:
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


def _rows(case: str) -> int | None:
    return int(case.split(":")[1]) if case.startswith("rows:") else None


def _target(
    name: str,
    store: str,
    case: str,
    value: float | None,
    threshold: float,
    at_least: bool = False,
    detail: str = "",
    judged: bool = True,
) -> dict[str, Any]:
    """A target line; ``judged`` False: measured off the target's conditions
    (a smaller case), so shown but neither met nor missed."""
    met = None
    if value is not None and judged:
        met = value >= threshold if at_least else value <= threshold
    return {
        "target": name,
        "store": store,
        "case": case,
        "value": value,
        "threshold": threshold,
        "direction": ">=" if at_least else "<=",
        "detail": detail,
        "met": met,
        "group": "engine",
    }


def _engine_case(results: list[dict[str, Any]]) -> tuple[str, bool]:
    """The case the 1M-row targets are judged on: 1M, or else the largest
    rows case measured (then only indicative)."""
    measured = [
        _rows(r["case"])
        for r in results
        if r["store"] == ENGINE_STORE and _rows(r["case"]) is not None
    ]
    if ENGINE_ROWS in measured or not measured:
        return f"rows:{ENGINE_ROWS}", True
    return f"rows:{max(measured)}", False


def _off_target(case: str, judged: bool) -> str:
    if judged:
        return ""
    return f"; indicative only: measured at {case.replace('rows:', '')}, judged at 1M"


def engine_targets(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 10's targets for flightlab's engine (the duckdb store)."""
    results = document["results"]
    case, judged = _engine_case(results)
    off = _off_target(case, judged)
    targets = []
    ours = _find(results, ENGINE_STORE, case, "flightlab")
    for mode, threshold, name in (
        ("engine-limit", LIMIT_FRACTION, "flightlab rows/s >= 0.8 x engine limit's"),
        ("feast", FEAST_SPEEDUP, "flightlab rows/s >= 5 x Feast serve_offline's"),
    ):
        other = _find(results, ENGINE_STORE, case, mode)
        value = detail = None
        if ours and other:
            value = ours["rows_per_second"] / other["rows_per_second"]
            detail = (
                f"{_rate(ours['rows_per_second'])} vs {_rate(other['rows_per_second'])} rows/s"
                + off
            )
        targets.append(
            _target(name, ENGINE_STORE, case, value, threshold, True, detail or "", judged)
        )

    ours, local = (_find(results, ENGINE_STORE, "mnist", m) for m in ("flightlab", "local"))
    value = ours["median"] / local["median"] if ours and local else None
    detail = f"{ours['median']:.2f}s vs {local['median']:.2f}s" if value is not None else ""
    targets.append(
        _target(
            "MNIST through the server <= 0.5 x local duckdb store",
            ENGINE_STORE,
            "mnist",
            value,
            MNIST_LOCAL_FRACTION,
            detail=detail,
        )
    )

    stream, feast = (_find(results, ENGINE_STORE, case, m) for m in ("flightlab-stream", "feast"))
    value, detail = None, ""
    if stream and feast and stream.get("server_call_rss") and feast.get("server_call_rss"):
        value = stream["server_call_rss"] / feast["server_call_rss"]
        detail = (
            f"+{stream['server_call_rss'] / MB:.0f} MB vs "
            f"+{feast['server_call_rss'] / MB:.0f} MB" + off
        )
    targets.append(
        _target(
            "streamed retrieval's server RSS growth <= 0.5 x Feast server's",
            ENGINE_STORE,
            case,
            value,
            SERVER_RSS_FRACTION,
            detail=detail,
            judged=judged,
        )
    )

    for run in document.get("latency", []):
        big = f"rows:{run['big_rows']}"
        contrast = run["mode"] != "flightlab"
        value, detail = run.get("ratio"), run.get("error", "")
        if value is not None:
            detail = (
                f"{run['busy_median'] * 1e3:.0f} ms vs {run['idle_median'] * 1e3:.0f} ms idle; "
                f"started while the large one was in flight: {sum(run['in_flight'])}/"
                f"{len(run['in_flight'])}, ended before it: {sum(run['ended_first'])}"
            )
        if run.get("call_errors"):
            detail += f"; {len(run['call_errors'])} call(s) failed: {run['call_errors'][0][:120]}"
        target = _target(
            f"1k-row latency with a 1M in flight <= 3 x idle ({run['mode']} server)",
            run["store"],
            big,
            value,
            LATENCY_FACTOR,
            detail=detail + _off_target(big, run["big_rows"] == ENGINE_ROWS),
            judged=run["big_rows"] == ENGINE_ROWS,
        )
        if contrast:  # Feast's store, for comparison: no verdict
            target.update(met=None, contrast=True)
        elif value is not None and not all(run["in_flight"]):
            target["detail"] += " - the small call did not always overlap the large one"
        targets.append(target)
    return targets


def evaluate_targets(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with its measured value and whether it is met
    (``None``: not measured in this run): issue 10's engine targets first,
    then the earlier ones."""
    results = document["results"]
    targets: list[dict[str, Any]] = engine_targets(document)
    stores = sorted({r["store"] for r in results})
    cases = sorted({r["case"] for r in results}, key=_case_key)

    for store in stores:
        for rows in LOCAL_RATIO_ROWS:
            record = _find(results, store, f"rows:{rows}", "flightlab")
            value = record.get("ratio_vs_local") if record else None
            targets.append(
                {
                    "target": "flightlab remote / local in-process <= 1.05",
                    "store": store,
                    "case": f"rows:{rows}",
                    "value": value,
                    "threshold": LOCAL_RATIO_TARGET,
                    "met": None if value is None else value <= LOCAL_RATIO_TARGET,
                }
            )

    for store in stores:
        for case in cases:
            feast = _find(results, store, case, "feast")
            for mode, client in (("flightlab", "flightlab"), ("flightlab+feast-client", "Feast")):
                ours = _find(results, store, case, mode)
                if not (feast and ours and feast.get("server_peak_rss")):
                    continue
                value = ours["server_peak_rss"] / feast["server_peak_rss"]
                targets.append(
                    {
                        "target": f"flightlab server peak RSS <= Feast server's ({client} client)",
                        "store": store,
                        "case": case,
                        "value": value,
                        "detail": f"{ours['server_peak_rss'] / MB:.0f} MB vs "
                        f"{feast['server_peak_rss'] / MB:.0f} MB",
                        "threshold": 1.0,
                        "met": value <= 1.0,
                    }
                )

    for store in stores:
        for case in cases:
            stream = _find(results, store, case, "flightlab-stream")
            if not stream or stream["result_bytes"] < STREAM_MIN_RESULT:
                continue
            value = stream["client_call_rss"] / stream["result_bytes"]
            targets.append(
                {
                    "target": "streaming client's RSS growth <= 0.5 x result size",
                    "store": store,
                    "case": case,
                    "value": value,
                    "detail": f"+{stream['client_call_rss'] / MB:.0f} MB for a "
                    f"{stream['result_bytes'] / MB:.0f} MB result: "
                    f"+{stream.get('client_upload_rss', 0) / MB:.0f} MB until the first batch "
                    "was in hand (entity upload, first message), "
                    f"+{stream.get('client_stream_rss', 0) / MB:.0f} MB from there on",
                    "threshold": STREAM_RSS_FRACTION,
                    "met": value <= STREAM_RSS_FRACTION,
                }
            )

    concurrency = document.get("concurrency", [])
    for store in stores:
        runs = {c["mode"]: c for c in concurrency if c["store"] == store}
        feast = runs.get("feast")
        for mode, client in (("flightlab", "flightlab"), ("flightlab+feast-client", "Feast")):
            ours = runs.get(mode)
            if feast is None or ours is None:
                continue
            target = {
                "target": f"{ours['clients']} concurrent clients: flightlab total "
                f"<= Feast server's ({client} client)",
                "store": store,
                "case": ours["case"],
                "threshold": 1.0,
            }
            targets.append(target)
            ours_ok, feast_ok = _clean(ours), _clean(feast)
            if "median_total" in ours and "median_total" in feast:
                target["value"] = ours["median_total"] / feast["median_total"]
                target["detail"] = f"{ours['median_total']:.2f}s vs {feast['median_total']:.2f}s"
            else:
                target["value"] = None
            if not ours_ok:
                target["met"] = False
                target["detail"] = f"flightlab: {_failure(ours)}"
            elif not feast_ok:
                # Feast's time is that of failed calls: no ratio, but flightlab
                # answered every call and Feast's server did not.
                target["met"] = True
                target["value"] = None
                target["detail"] = (
                    f"flightlab answered all {ours['calls']} calls in "
                    f"{ours['median_total']:.2f}s; Feast server: {_failure(feast)}"
                )
            else:
                target["met"] = target["value"] <= 1.0
    return targets


def _clean(run: dict[str, Any]) -> bool:
    return "median_total" in run and not run.get("failed_calls")


def _failure(run: dict[str, Any]) -> str:
    if "error" in run:
        return run["error"]
    return f"{run['failed_calls']} of {run['calls']} calls failed ({run['call_errors'][0]})"


def _case_key(case: str) -> tuple[int, int]:
    rows = _rows(case)
    return (1, 0) if rows is None else (0, rows)


def _rate(value: float | None) -> str:
    """Rows per second, short: 1.23M, 456k."""
    if not value:
        return "-"
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    return f"{value / 1e3:.0f}k" if value >= 1e3 else f"{value:.0f}"


def _mb(value: float | None) -> str:
    return "-" if not value else f"{value / MB:,.0f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _table(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            str(c).rjust(w) if i in right else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]


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
        "rose during one call. rows/s: result rows / median.",
        "",
    ]
    header = ["store", "case", "mode", "median s", "rows/s", "x local", "x feast"]
    header += ["srv peak MB", "srv + MB", "cli peak MB", "cli + MB", "result MB", "rows"]
    rows = []
    for r in document["results"]:
        if "median" not in r:
            rows.append([r["store"], r["case_label"], r["mode"], "FAILED", r.get("error", "")])
            rows[-1] += [""] * (len(header) - len(rows[-1]))
            continue
        rows.append(
            [
                r["store"],
                r["case_label"],
                r["mode"],
                f"{r['median']:.3f}",
                _rate(r.get("rows_per_second")),
                _ratio(r.get("ratio_vs_local")),
                _ratio(r.get("ratio_vs_feast")),
                _mb(r.get("server_peak_rss")),
                _mb(r.get("server_call_rss")),
                _mb(r.get("client_peak_rss")),
                _mb(r.get("client_call_rss")),
                f"{r['result_bytes'] / MB:,.1f}",
                f"{r['result_rows']:,}",
            ]
        )
    out += _table(header, rows, right=set(range(3, len(header))))

    if document.get("concurrency"):
        out += ["", "Concurrent clients (wall time from the first call's start to the last's end):"]
        header = ["store", "case", "server + client", "clients", "median total s"]
        header += ["median per client s", "srv peak MB", "failed calls"]
        rows = []
        for c in document["concurrency"]:
            if "median_total" not in c:
                rows.append([c["store"], c["case_label"], c["mode"], str(c["clients"]), "FAILED"])
                rows[-1] += [""] * (len(header) - len(rows[-1]))
                continue
            rows.append(
                [
                    c["store"],
                    c["case_label"],
                    c["mode"],
                    str(c["clients"]),
                    f"{c['median_total']:.3f}",
                    f"{c['median_client']:.3f}",
                    _mb(c.get("server_peak_rss")),
                    f"{c['failed_calls']}/{c['calls']}"
                    + (f" ({c['call_errors'][0][:60]})" if c["call_errors"] else ""),
                ]
            )
        out += _table(header, rows, right={3, 4, 5, 6})
        failures = [c for c in document["concurrency"] if "error" in c]
        for c in failures:
            out.append(f"  FAILED {c['store']} {c['mode']}: {c['error']}")

    out += _latency_table(document.get("latency", []))

    if document.get("loopback"):
        out += ["", "Raw Arrow Flight loopback (in-memory table, 64k-row batches, do_get):"]
        header = ["case", "median s", "GB/s", "result MB", "rows"]
        rows = []
        for c in document["loopback"]:
            if "median" not in c:
                rows.append([c["case_label"], "FAILED", c.get("error", ""), "", ""])
                continue
            rows.append(
                [
                    c["case_label"],
                    f"{c['median']:.3f}",
                    f"{c['gb_per_second']:.2f}",
                    f"{c['result_bytes'] / MB:,.1f}",
                    f"{c['result_rows']:,}",
                ]
            )
        out += _table(header, rows, right={1, 2, 3, 4})

    targets = document.get("targets", [])
    for group, title in (("engine", "Targets (issue 10, the engine):"), (None, "Earlier targets:")):
        chosen = [t for t in targets if t.get("group") == group]
        if chosen:
            out += ["", title] + [_target_line(t) for t in chosen]
    if document.get("notes"):
        out += ["", "Notes:"] + [f"  - {n}" for n in document["notes"]]
    out.append("")
    return "\n".join(out)


def _target_line(t: dict[str, Any]) -> str:
    verdict = {True: "MET   ", False: "MISSED", None: "n/a   "}[t["met"]]
    if t.get("contrast"):
        verdict = "info  "
    if t["value"] is not None:
        value = f"{t['value']:.2f}"
    else:
        value = "no ratio" if t["met"] is not None else "not measured"
    detail = f" ({t['detail']})" if t.get("detail") else ""
    case = case_label_short(t["case"])
    if t["met"] is False and t["value"] is not None:
        if t.get("direction") == ">=":
            close = t["value"] * NOISE >= t["threshold"]
        else:
            close = t["value"] <= NOISE * t["threshold"]
        if close:
            detail += " - within 2% of the threshold: noise"
    return f"  {verdict} {t['target']}: {t['store']} {case}: {value}{detail}"


def _latency_table(runs: list[dict[str, Any]]) -> list[str]:
    if not runs:
        return []
    out = [
        "",
        "Latency of a small retrieval, idle and with a large one in flight "
        "(the small call starts once the large one streams, or 1 s into it):",
    ]
    header = ["store", "server", "small rows", "large rows", "idle ms", "busy ms", "x idle"]
    header += ["overlapped", "ended first", "started at", "large s"]
    rows = []
    for run in runs:
        cells = [run["store"], run["mode"], f"{run['small_rows']:,}", f"{run['big_rows']:,}"]
        if "ratio" not in run:
            rows.append([*cells, "FAILED", run.get("error", "")[:80], "", "", "", "", ""])
            continue
        rows.append(
            [
                *cells,
                f"{run['idle_median'] * 1e3:.0f}",
                f"{run['busy_median'] * 1e3:.0f}",
                f"{run['ratio']:.1f}",
                f"{sum(run['in_flight'])}/{len(run['in_flight'])}",
                f"{sum(run['ended_first'])}/{len(run['ended_first'])}",
                ", ".join(sorted(set(run["triggers"]))),
                f"{max(run['big_seconds']):.2f}",
            ]
        )
    return out + _table(header, rows, right={2, 3, 4, 5, 6, 10})


MODE_COLORS = {
    "local": "#4c72b0",
    "engine-limit": "#2f2f6f",
    "flightlab": "#dd8452",
    "flightlab-stream": "#f2b880",
    "flightlab-feast-engine": "#a0522d",
    "flightlab-engine": "#e8a33c",
    "feast": "#55a868",
    "flightlab+feast-client": "#c44e52",
    "loopback": "#8c8c8c",
}


def plot(document: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    results = [r for r in document["results"] if "median" in r]
    stores = [s for s in dict.fromkeys(r["store"] for r in results)]
    if not stores:
        return
    modes = [m for m in MODE_COLORS if any(r["mode"] == m for r in results)]
    loopback = {c["case"]: c for c in document.get("loopback", []) if "median" in c}
    fig, axes = plt.subplots(2, max(2, len(stores)), figsize=(7 * max(2, len(stores)), 10))
    for ax, store in zip(axes[0], stores, strict=False):
        cases = sorted({r["case"] for r in results if r["store"] == store}, key=_case_key)
        series = modes + (["loopback"] if loopback else [])
        width = 0.8 / len(series)
        for i, mode in enumerate(series):
            xs, ys = [], []
            for j, case in enumerate(cases):
                if mode == "loopback":
                    record = loopback.get(case)
                else:
                    record = _find(results, store, case, mode)
                if record is not None:
                    xs.append(j + (i - (len(series) - 1) / 2) * width)
                    ys.append(record["median"])
            ax.bar(xs, ys, width, label=mode, color=MODE_COLORS[mode])
            if mode == "flightlab":
                for x, y, case in zip(xs, ys, cases, strict=False):
                    ratio = (_find(results, store, case, mode) or {}).get("ratio_vs_local")
                    if ratio is not None:
                        ax.annotate(
                            f"x{ratio:.2f}",
                            (x, y),
                            textcoords="offset points",
                            xytext=(0, 3),
                            ha="center",
                            fontsize=7,
                        )
        ax.set_xticks(range(len(cases)))
        ax.set_xticklabels([_case_title(c) for c in cases])
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
    concurrency = document.get("concurrency", [])
    if any("median_total" in c for c in concurrency):
        kinds = list(dict.fromkeys(c["mode"] for c in concurrency))
        width = 0.8 / len(kinds)
        for i, kind in enumerate(kinds):
            xs, ys, notes = [], [], []
            for j, store in enumerate(stores):
                for c in concurrency:
                    if c["store"] == store and c["mode"] == kind:
                        xs.append(j + (i - (len(kinds) - 1) / 2) * width)
                        ys.append(c.get("median_total", 0))
                        if "error" in c:
                            notes.append("hung" if "hung" in c["error"] else "failed")
                        elif c.get("failed_calls"):
                            notes.append(f"{c['failed_calls']} calls\nfailed")
                        else:
                            notes.append("")
            ax.bar(xs, ys, width, label=kind, color=MODE_COLORS.get(kind))
            for x, y, note in zip(xs, ys, notes, strict=True):
                if note:
                    ax.annotate(
                        f"{kind}:\n{note}" if not y else note,
                        (x, y),
                        textcoords="offset points",
                        xytext=(0, 3),
                        ha="center",
                        fontsize=7,
                        color="#b00000",
                    )
        first = concurrency[0]
        ax.set_xticks(range(len(stores)))
        ax.set_xticklabels(stores)
        ax.set_ylabel("median total seconds")
        ax.set_title(f"{first['clients']} concurrent clients, {first['case_label']} rows each")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    else:
        ax.axis("off")

    ax = axes[1][1]
    groups = [
        (store, case)
        for store in stores
        for case in sorted({r["case"] for r in results if r["store"] == store}, key=_case_key)
    ]
    servers = ("flightlab", "flightlab-feast-engine", "flightlab+feast-client", "feast")
    servers = [m for m in servers if m in modes]
    if servers:
        width = 0.8 / len(servers)
        for i, mode in enumerate(servers):
            xs, ys = [], []
            for j, (store, case) in enumerate(groups):
                record = _find(results, store, case, mode)
                if record is not None and record.get("server_peak_rss"):
                    xs.append(j + (i - (len(servers) - 1) / 2) * width)
                    ys.append(record["server_peak_rss"] / MB)
            ax.bar(xs, ys, width, label=f"server of {mode}", color=MODE_COLORS[mode])
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([f"{s}\n{case_label_short(c)}" for s, c in groups], fontsize=8)
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


def case_label_short(case: str) -> str:
    rows = _rows(case)
    return "MNIST" if rows is None else _case_title(case).replace(" rows", "")


def _case_title(case: str) -> str:
    rows = _rows(case)
    if rows is None:
        return "MNIST 70k x 28 arrays"
    if rows >= 1_000_000:
        return f"{rows / 1_000_000:g}M rows"
    return f"{rows / 1_000:g}k rows" if rows >= 1_000 else f"{rows} rows"
