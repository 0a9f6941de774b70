"""The seed's design for `GET /list-scripts`, as FastAPI would serve it: the
peer bench/routes.sh measures dynapi's built-in routes against.

The seed checked a bearer token against the one in its environment (FastAPI's
HTTPBearer), listed the files of the workspace's `scripts/` folder and
answered `{"scripts": [...]}`. Run under uvicorn, as the seed was:

    API_TOKEN=... WORKSPACE=... uvicorn list_scripts:app --app-dir bench
"""

import os
import secrets

from fastapi import Depends, FastAPI, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

API_TOKEN = os.environ["API_TOKEN"]
SCRIPTS_DIR = os.path.join(os.environ["WORKSPACE"], "scripts")

app = FastAPI(title="seed")
bearer = HTTPBearer()


def verify_token(credentials: HTTPAuthorizationCredentials = Depends(bearer)) -> str:
    if not secrets.compare_digest(credentials.credentials, API_TOKEN):
        raise HTTPException(status_code=status.HTTP_401_UNAUTHORIZED, detail="Invalid token")
    return credentials.credentials


@app.get("/list-scripts")
def list_scripts(_: str = Depends(verify_token)) -> dict:
    scripts = sorted(
        name
        for name in os.listdir(SCRIPTS_DIR)
        if os.path.isfile(os.path.join(SCRIPTS_DIR, name))
    )
    return {"scripts": scripts}
