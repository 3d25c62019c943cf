"""The benchmark's ratios, targets, printed table and chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

MB = 1e6
# Modes whose server is flightlab's: compared with Feast's server too.
FLIGHTLAB_SERVER_MODES = ("flightlab", "flightlab-stream", "flightlab+feast-client")
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


def evaluate_targets(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with its measured value and whether it is met
    (``None``: not measured in this run)."""
    results = document["results"]
    targets: list[dict[str, Any]] = []
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
        "during the timed calls; cli +: how far the client's RSS rose during one call.",
        "",
    ]
    header = ["store", "case", "mode", "median s", "x local", "x feast"]
    header += ["srv peak MB", "cli peak MB", "cli + MB", "result MB", "rows"]
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
                _ratio(r.get("ratio_vs_local")),
                _ratio(r.get("ratio_vs_feast")),
                _mb(r.get("server_peak_rss")),
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

    out += ["", "Targets:"]
    for t in document.get("targets", []):
        verdict = {True: "MET   ", False: "MISSED", None: "n/a   "}[t["met"]]
        if t["value"] is not None:
            value = f"{t['value']:.2f}"
        else:
            value = "no ratio" if t["met"] is not None else "not measured"
        detail = f" ({t['detail']})" if t.get("detail") else ""
        case = t["case"].replace("rows:", "") if t["case"] != "mnist" else "MNIST"
        if t["met"] is False and t["value"] is not None and t["value"] <= NOISE * t["threshold"]:
            detail += " - within 2% of the threshold: noise"
        out.append(f"  {verdict} {t['target']}: {t['store']} {case}: {value}{detail}")
    if document.get("notes"):
        out += ["", "Notes:"] + [f"  - {n}" for n in document["notes"]]
    out.append("")
    return "\n".join(out)


MODE_COLORS = {
    "local": "#4c72b0",
    "flightlab": "#dd8452",
    "flightlab-stream": "#f2b880",
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
    servers = [m for m in ("flightlab", "flightlab+feast-client", "feast") if m in modes]
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
