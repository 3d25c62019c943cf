"""Progress bars for retrievals: callbacks for
:meth:`~flightlab.client.RemoteRetrievalJob.to_arrow_with_progress`."""

from __future__ import annotations

from typing import Any

from flightlab.client.transport import Progress


class ProgressBar:
    """A tqdm bar fed by flightlab :class:`~flightlab.client.transport.Progress` callbacks.

    ``job.to_arrow_with_progress(bar)``: rows as the bar's unit, megabytes
    and batches as its postfix. A widget in Jupyter, text elsewhere.
    """

    def __init__(self, total: int | None, desc: str = "rows", **tqdm_kwargs: Any):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="rows", unit_scale=True, **tqdm_kwargs)
        self.last: Progress | None = None

    def __call__(self, progress: Progress) -> None:
        self.last = progress
        total = getattr(progress, "total_rows", None)
        if total is not None and self.bar.total != total:
            self.bar.total = total
        self.bar.update(progress.rows - self.bar.n)
        self.bar.set_postfix(MB=f"{progress.bytes / 1e6:.0f}", batches=progress.batches)

    def close(self) -> None:
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
