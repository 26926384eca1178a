"""``tests.apps.relay`` as a FastAPI app: the outside client comes as a dependency."""

from __future__ import annotations

from fastapi import FastAPI

from meshkit import Mesh, allow
from meshkit.fastapi import Outside

app = FastAPI()
mesh = Mesh(app, service="relay")


@app.get("/relay")
@allow(anonymous=True, mesh=True)
async def relay(url: str, outside: Outside) -> dict[str, object]:
    response = await outside.get(url)
    return {"status": response.status_code, "body": response.text}
