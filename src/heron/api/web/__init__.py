"""The web UI's static files, built from `web/` at the repository root into `dist/` here.

`scripts/install-deps` builds them (npm ci, npm run build); they are never committed. Any path
outside /api/ that is not a built file gets index.html, so the UI's own routes survive a reload.
"""

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse, Response

from heron.api.errors import NotFound

DIST = Path(__file__).parent / "dist"

_NOT_BUILT = """<!doctype html><meta charset="utf-8"><title>Heron</title>
<p>The web UI has not been built. Run <code>scripts/install-deps</code> (it needs npm).
The API is at <a href="/api/v1/docs">/api/v1/docs</a>.</p>"""


def _file(dist: Path, path: str) -> Path | None:
    candidate = (dist / path).resolve()
    if candidate.is_file() and candidate.is_relative_to(dist.resolve()):
        return candidate
    return None


def install(app: FastAPI, dist: Path = DIST) -> None:
    """Serve the UI at / with a fallback to index.html; call after the API's routes."""

    @app.get("/{path:path}", include_in_schema=False)
    async def ui(path: str) -> Response:
        if path == "api" or path.startswith("api/"):
            raise NotFound(f"no route /{path}")
        found = _file(dist, path) if path else None
        if found is not None:
            # Vite puts a content hash in every asset name: cache them for good.
            immutable = path.startswith("assets/")
            cache = "public, max-age=31536000, immutable" if immutable else "no-cache"
            return FileResponse(found, headers={"cache-control": cache})
        index = dist / "index.html"
        if not index.is_file():
            return HTMLResponse(_NOT_BUILT, status_code=503)
        return FileResponse(index, headers={"cache-control": "no-cache"})
