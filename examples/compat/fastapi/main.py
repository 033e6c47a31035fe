"""FastAPI as its tutorial shows it, served by `uvicorn --fd 3 main:app`
(uvicorn takes the socket passed as fd 3; its own stop on SIGTERM)."""
import os

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

app = FastAPI()
release = os.environ.get("DEPLOY_RELEASE_ID", "dev")


@app.get("/", response_class=PlainTextResponse)
def hello():
    return f"hello from {release}\n"
