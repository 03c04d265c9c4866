"""Publishing a run's exports to the Hugging Face Hub, with the data card (pipeline/cards.py).

    distill publish runs/quickstart --repo-id ORG/NAME --dry-run   # -> runs/quickstart/publish/ (no upload)
    distill publish runs/quickstart --repo-id ORG/NAME [--private] [--include-rejected]

Publishing writes one folder, the exact one that is uploaded: ``README.md`` plus
``<config>/train-NNNNN-of-NNNNN.parquet`` for each export (sft, dpo, kd), and, only with
``include_rejected``, ``rejected_<stage>/`` for the rows the filters dropped. The folder is checked for
secrets (the values of $HF_TOKEN, $OPENAI_API_KEY and other *_TOKEN / *_KEY / *_SECRET / *_PASSWORD
variables, and the stored Hub token) before anything leaves the machine.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq

from pipeline import store
from pipeline.cards import check_metadata, export_configs, render_card
from pipeline.errors import UserError
from pipeline.report import last_stage, stage_manifests

PUBLISH_DIR = "publish"
ROWS_PER_FILE = 100_000  # keeps each Parquet file well under the Hub's recommended size
SECRET_ENV = re.compile(r"(^|_)(TOKEN|KEY|SECRET|PASSWORD|APIKEY)$", re.IGNORECASE)


def build_folder(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    repo_id: str | None = None,
    include_rejected: bool = False,
    license: str | None = None,
    language: list[str] | None = None,
) -> Path:
    """Write the folder that is uploaded: README.md + <config>/train-NNNNN-of-NNNNN.parquet. Returns it."""
    from huggingface_hub import DatasetCard

    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir else run_dir / PUBLISH_DIR
    stages = stage_manifests(run_dir)
    if last_stage(stages, "export") is None:
        raise UserError(
            f"{run_dir} has no export stage; run `distill export` (or add it to the recipe) first"
        )
    shutil.rmtree(out, ignore_errors=True)  # a stale folder must not outlive a refused build
    configs = export_configs(run_dir, stages, include_rejected)
    secrets = secret_values()
    for c in configs:  # the Arrow files are uncompressed: a byte search finds any secret in any column
        for f in sorted(c["source"].glob("data-*.arrow")):
            _refuse_secrets(f.read_bytes(), secrets, f"{c['name']} rows ({f.parent})")
    text = render_card(
        run_dir, repo_id=repo_id, license=license, language=language, include_rejected=include_rejected
    )
    _refuse_secrets(text.encode(), secrets, "the card")

    tmp = out.with_name(f".{out.name}.tmp.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for c in configs:
        table = store.load_table(c["source"]).select(c["columns"])
        n_files = max(1, -(-table.num_rows // ROWS_PER_FILE))
        (tmp / c["name"]).mkdir()
        for i in range(n_files):
            part = table.slice(i * ROWS_PER_FILE, ROWS_PER_FILE)
            pq.write_table(part, tmp / c["name"] / f"train-{i:05d}-of-{n_files:05d}.parquet")
    DatasetCard(text).save(tmp / "README.md")
    check_metadata(DatasetCard.load(tmp / "README.md").data.to_dict(), tmp)
    os.replace(tmp, out)
    return out


def secret_values() -> dict[str, str]:
    """{where: value} of the secrets this process can see: *_TOKEN/_KEY/_SECRET/_PASSWORD variables, the Hub token."""
    found = {f"${k}": v for k, v in os.environ.items() if SECRET_ENV.search(k) and len(v) >= 8}
    try:
        from huggingface_hub import get_token

        token = get_token()
    except Exception:  # noqa: BLE001 - a broken token file just means there is no stored token to protect
        token = None
    if token:
        found["the stored Hugging Face token"] = token
    return found


def _refuse_secrets(data: bytes, secrets: dict[str, str], what: str) -> None:
    for name, value in secrets.items():
        if value.encode() in data:
            raise UserError(
                f"publish: {what} contain the value of {name}; remove it from the data before publishing"
            )


def publish(
    run_dir: str | Path,
    repo_id: str,
    private: bool = False,
    dry_run: bool = False,
    include_rejected: bool = False,
    *,
    license: str | None = None,
    language: list[str] | None = None,
) -> Path:
    """`distill publish`: upload the run's exports as configs of one dataset repo, with the card.

    With `dry_run`, only write runs/<run>/publish/ (the exact folder that would be uploaded) and return it.
    """
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id or ""):
        raise UserError(f"--repo-id {repo_id!r} must look like ORG/NAME (e.g. my-org/{Path(run_dir).name})")
    if not dry_run:
        _check_hub_access()
    folder = build_folder(
        run_dir, repo_id=repo_id, include_rejected=include_rejected, license=license, language=language
    )
    if dry_run:
        return folder
    _upload(folder, repo_id, private)
    return folder


def _offline() -> bool:
    from huggingface_hub import constants

    return constants.is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").lower() in (
        "1",
        "true",
        "yes",
        "on",
    )


def _check_hub_access() -> None:
    from huggingface_hub import get_token

    if _offline():
        raise UserError(
            "publish: HF_HUB_OFFLINE is set; unset it to upload, or pass --dry-run to only write the folder"
        )
    if not get_token():
        raise UserError(
            "publish: no Hugging Face token; run `hf auth login` or set HF_TOKEN (or pass --dry-run)"
        )


def _upload(folder: Path, repo_id: str, private: bool) -> None:
    import httpx
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    api = HfApi()
    try:
        # Without --private, None leaves the namespace's default (an org may default to private).
        api.create_repo(repo_id, repo_type="dataset", private=True if private else None, exist_ok=True)
        api.upload_folder(
            repo_id=repo_id,
            repo_type="dataset",
            folder_path=str(folder),
            commit_message=f"distill publish {folder.parent.name}",
        )
    except OfflineModeIsEnabled:
        raise UserError("publish: HF_HUB_OFFLINE is set; unset it to upload, or pass --dry-run") from None
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        if status in (401, 403):
            raise UserError(
                f"publish: the Hub refused the token for {repo_id} (HTTP {status}); "
                "log in with a write token (`hf auth login`) that may write to this namespace"
            ) from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"publish: the Hub rejected the upload to {repo_id} ({first}); fix that and rerun"
        ) from None
    except (httpx.HTTPError, OSError) as e:
        raise UserError(
            f"publish: could not reach the Hub at {constants.ENDPOINT} ({type(e).__name__}); "
            "check the network, or pass --dry-run to only write the folder"
        ) from None
