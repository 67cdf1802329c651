"""The page's file transfers: a sheet in (upload, a new job), a job's files out (download)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

import anyio
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from batchphone.ui import files
from batchphone.ui.jobs import Jobs, error

__all__ = ["Transfers"]

_MEDIA = {
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "csv": "text/csv; charset=utf-8",
}


class Transfers:
    """The upload and download handlers."""

    def __init__(self, jobs: Jobs) -> None:
        self.jobs = jobs

    async def upload(self, request: Request) -> Response:
        """A new job for the file in the body (named by ``x-filename``), within the limit."""
        name = unquote(request.headers.get("x-filename", ""))
        suffix = Path(name).suffix.lower()
        if suffix not in (".csv", ".tsv", ".xlsx", ".parquet", ".jsonl"):
            return error(400, f"{suffix or 'this file type'} is not read: choose a CSV, TSV, "
                              "XLSX, Parquet or JSONL file")  # fmt: skip
        limit = self.jobs.page.upload_limit
        declared = request.headers.get("content-length")
        too_large = f"the file is larger than the limit of {_size(limit)}: nothing was kept"
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return error(413, too_large)
        try:
            job_id = await files.new_job(self.jobs.page.work, name, request.stream(), limit)
        except files.UploadTooLarge:
            return error(413, too_large)
        return JSONResponse({"job": job_id, "url": f"/jobs/{job_id}"})

    async def download(self, request: Request) -> Response:
        """A job's plan, result or undo file (or the result's short sheet) as XLSX or CSV."""
        folder = self.jobs.folder(request.path_params["job"])
        record = files.load_job(folder)
        name, fmt = request.path_params["name"], request.path_params["fmt"]
        short = name == "short"
        source = folder / files.OUTPUTS["result" if short else name] if (
            short or name in files.OUTPUTS
        ) else None  # fmt: skip
        if source is None or fmt not in ("xlsx", "csv") or not source.is_file():
            return error(404, "no such file")
        if files.lock_holder(source) is not None:
            return error(409, "the file is being written: wait for the task to end")
        stem = Path(record["name"]).stem
        filename = f"{stem}-{name}.{fmt}"
        disposition = {"content-disposition": f'attachment; filename="{filename}"'}
        if fmt == "xlsx" and not short:
            return FileResponse(source, headers=disposition, media_type=_MEDIA[fmt])
        data = await anyio.to_thread.run_sync(files.converted, source, fmt, short)
        return Response(data, media_type=_MEDIA[fmt], headers=disposition)


def _size(limit: int) -> str:
    return f"{limit / 1_000_000:g} MB" if limit >= 1_000_000 else f"{limit:,} bytes"
