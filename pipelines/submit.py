"""``python -m pipelines submit``: run the pipeline (or a sweep) as a Ray job on a cluster, through the Jobs API.

The project folder is uploaded as the job's ``working_dir`` (without virtualenvs,
caches and local MLflow stores); the job runs ``python -m pipelines run`` (or
``sweep``) on the head node with the cluster's own Python, so nothing is
pip-installed per job.
"""

import asyncio
import os
import shlex
from pathlib import Path

from ray.job_submission import JobStatus, JobSubmissionClient

from pipelines.config import ConfigError, load, resolve_path

ROOT = Path(__file__).resolve().parents[1]  # the project folder, which the job receives
EXCLUDES = [".venv", ".git", "data/cache", "mlruns", "mlartifacts", "mlflow.db", "checkpoints", "runs", "**/__pycache__"]


def auth_token() -> str | None:
    """Ray's auth token, looked up where Ray looks: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, then ~/.ray/auth_token."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"]
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    return path.read_text().strip() if path.is_file() else None


def in_job(path: Path) -> str:
    """A file's path inside the uploaded project, the only folder the job receives."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        raise ConfigError(f"{path}: a submitted config or space file must be inside {ROOT}, which is what the job receives") from None


def entrypoint(config: str | None, overrides: list[str], space: str | None = None, sweep_options: list[str] = ()) -> str:
    """The job's command: ``run``, or with a ``space`` file ``sweep``; its files must lie inside the project."""
    path = resolve_path(config)
    if path is not None and path.is_file():
        config = in_job(path)
    command = ["sweep", "--space", in_job(Path(space)), *sweep_options] if space else ["run"]
    return shlex.join(["python", "-m", "pipelines", *command, *([config] if config else []), *(f"--set={o}" for o in overrides)])


def submit(
    config: str | None, overrides: list[str], address: str, tracking_uri: str | None, space: str | None = None, sweep_options: list[str] = ()
) -> int:
    """Submit, stream the job's logs until it ends, and return 0 if it succeeded, else 1."""
    load(config, overrides)  # a bad config fails here, before anything reaches the cluster
    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not tracking_uri:
        raise ConfigError("--tracking-uri (or MLFLOW_TRACKING_URI): a job needs an MLflow store it can reach; a local file would stay on the cluster")
    env = {"MLFLOW_TRACKING_URI": tracking_uri, "RAY_USAGE_STATS_ENABLED": "0"}
    token = auth_token()
    if token:
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    client = JobSubmissionClient(address)
    job_id = client.submit_job(
        entrypoint=entrypoint(config, overrides, space, sweep_options),
        runtime_env={"working_dir": str(ROOT), "excludes": EXCLUDES, "env_vars": env},
    )
    print(f"submitted job {job_id} to {address}", flush=True)
    try:
        asyncio.run(stream_logs(client, job_id))
    except KeyboardInterrupt:
        client.stop_job(job_id)  # the job ends its MLflow runs as KILLED on SIGTERM
        raise
    status = client.get_job_status(job_id)
    print(f"job {job_id}: {status.value}", flush=True)
    return 0 if status == JobStatus.SUCCEEDED else 1


async def stream_logs(client: JobSubmissionClient, job_id: str) -> None:
    async for lines in client.tail_job_logs(job_id):
        print(lines, end="", flush=True)
