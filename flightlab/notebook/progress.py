"""Progress bars for retrievals: callbacks for
:meth:`~flightlab.client.RemoteRetrievalJob.to_arrow_with_progress`.

In JupyterLab the bar is a widget that moves. A headless run (papermill, no
page to draw widgets on) would save each widget as its text repr
(``FloatProgress(value=0.0, ...)``), so there the bar writes nothing while it
runs and prints one line, its final state, when it closes.
"""

from __future__ import annotations

import io
import os
from typing import Any

from flightlab.client.transport import Progress

# Set (to anything but "" or "0") by scripts/run_notebooks.py for its kernels.
HEADLESS_ENV = "FLIGHTLAB_HEADLESS"


def headless() -> bool:
    """True when notebooks run without a page to draw widgets (``FLIGHTLAB_HEADLESS``)."""
    return os.environ.get(HEADLESS_ENV, "") not in ("", "0")


class ProgressBar:
    """A tqdm bar fed by flightlab :class:`~flightlab.client.transport.Progress` callbacks.

    ``job.to_arrow_with_progress(bar)``: rows as the bar's unit, megabytes
    and batches as its postfix. A widget in Jupyter, text elsewhere, one final
    line when :func:`headless` (or ``quiet=True``).
    """

    def __init__(
        self,
        total: int | None,
        desc: str = "rows",
        quiet: bool | None = None,
        **tqdm_kwargs: Any,
    ):
        self.quiet = headless() if quiet is None else quiet
        if self.quiet:
            from tqdm import tqdm

            tqdm_kwargs["file"] = io.StringIO()  # drawn nowhere; printed once on close
        else:
            from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="rows", unit_scale=True, **tqdm_kwargs)
        self.last: Progress | None = None
        self.final_line: str | None = None

    def __call__(self, progress: Progress) -> None:
        self.last = progress
        total = getattr(progress, "total_rows", None)
        if total is not None and self.bar.total != total:
            self.bar.total = total
        self.bar.update(progress.rows - self.bar.n)
        self.bar.set_postfix(MB=f"{progress.bytes / 1e6:.0f}", batches=progress.batches)

    def close(self) -> None:
        if self.quiet and self.final_line is None:
            self.final_line = str(self.bar).strip()  # before close: the elapsed time is kept
            print(self.final_line)
        self.bar.close()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def fetch_with_progress(job: Any, total: int | None = None, desc: str = "retrieving") -> Any:
    """Run a remote retrieval job with a progress bar; return its Arrow table."""
    with ProgressBar(total, desc=desc) as bar:
        table = job.to_arrow_with_progress(bar)
    return table
