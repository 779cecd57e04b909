"""Job-level checkpoints for long training jobs: written whole or not at all, read back without unpickling.

A checkpoint is a directory `<root>/ckpt-<global step>/` holding
    weights.safetensors   the trainable tensors (every parameter for full fine-tuning; adapters and new rows for LoRA)
    trainer.pt            optimizer, scheduler and torch RNG states: tensors and plain containers only, read back
                          with `torch.load(..., weights_only=True)`
    state.json            format version, counters, controller values, numpy and Python RNG states; written last
It is written under a temporary name and renamed into place, so a job killed mid-write leaves only a `.tmp`
directory, which the next start removes. The newest `keep` complete checkpoints stay on disk.

Any trainer adopts it in three calls: `Checkpoints(root, kind).latest()` at start-up, `.load(path)` to restore,
and `.save(step, tensors, objects, state)` at the points it wants to resume from; `rng_state`/`set_rng_state`
capture every RNG and `ensure_writable` fails early on a read-only results directory; `claim_run`/`finish_run`
keep the run.json that says which run the checkpoints belong to. methods/common/trainer.py (`Resumable`) puts them
together for Quark and PPO.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from core.data import atomic_output
from core.errors import SuiteError

CHECKPOINT_VERSION = 1
_PREFIX = "ckpt-"


def ensure_writable(directory: str | Path) -> Path:
    """Create `directory` if needed and prove it writable now, rather than after hours of training."""
    directory = Path(directory)
    probe = directory / f".write-test-{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise SuiteError(f"results directory {directory} is not writable ({exc.strerror or exc})") from None
    return directory


RUN_FILE = "run.json"


def read_run(run_file: str | Path) -> dict | None:
    """A run directory's run.json (None: none yet); bad JSON or another format version is a one-line SuiteError."""
    run_file = Path(run_file)
    if not run_file.is_file():
        return None
    try:
        run = json.loads(run_file.read_text())
    except json.JSONDecodeError as exc:
        raise SuiteError(
            f"{run_file}: not valid JSON ({exc.msg}); move {run_file.parent} away to start afresh"
        ) from None
    if run.get("version") != CHECKPOINT_VERSION:
        raise SuiteError(
            f"{run_file}: run of version {run.get('version')!r}, this code resumes version "
            f"{CHECKPOINT_VERSION}; move {run_file.parent} away to start afresh"
        )
    return run


def claim_run(out_dir: str | Path, identity: dict, method: str) -> bool:
    """Open a run directory for a job whose settings are `identity`; True when it holds an unfinished run to resume.

    run.json records what the directory's checkpoints belong to. None there, or a finished run: start afresh. An
    unfinished run with other settings is refused in one line naming what differs, before anything is written.
    """
    out_dir = ensure_writable(out_dir)
    run_file = out_dir / RUN_FILE
    previous = read_run(run_file)
    identity = json.loads(json.dumps(identity))  # as it reads back from JSON
    resume = previous is not None and not previous["finished"]
    if resume and previous["identity"] != identity:
        old = previous["identity"]
        changed = [k for k in identity if k != "config" and old.get(k) != identity[k]]
        changed += [k for k, v in identity.get("config", {}).items() if old.get("config", {}).get(k) != v]
        raise SuiteError(
            f"{out_dir}: holds an unfinished {method} run with other settings ({', '.join(changed)}); "
            f"rerun with its settings to resume it, or move it away to start afresh"
        )
    _write_run(run_file, {"version": CHECKPOINT_VERSION, "finished": False, "identity": identity})
    return resume


def finish_run(out_dir: str | Path) -> None:
    """Mark the run finished: a later job in this directory starts afresh instead of resuming it."""
    run_file = Path(out_dir) / RUN_FILE
    _write_run(run_file, {**json.loads(run_file.read_text()), "finished": True})


def _write_run(run_file: Path, run: dict) -> None:
    with atomic_output(run_file) as tmp:
        tmp.write_text(json.dumps(run, indent=2) + "\n")


def rng_state() -> tuple[dict, dict]:
    """(tensors for trainer.pt, JSON for state.json) capturing torch, CUDA, numpy and Python RNGs."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.cuda.get_rng_state_all()
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    plain = {"numpy": [kind, keys.tolist(), pos, has_gauss, gauss], "python": [version, list(internal), gauss_next]}
    return tensors, plain


def set_rng_state(tensors: dict, plain: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(tensors["cuda"])
    kind, keys, pos, has_gauss, gauss = plain["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = plain["python"]
    random.setstate((version, tuple(internal), gauss_next))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Checkpoints:
    """The checkpoints of one job under `root`, newest last; `kind` names the trainer that wrote them."""

    def __init__(self, root: str | Path, kind: str, keep: int = 2):
        if keep < 1:
            raise SuiteError(f"keep_checkpoints must be at least 1, got {keep}")
        self.root, self.kind, self.keep = Path(root), kind, keep

    def complete(self) -> list[Path]:
        """Complete checkpoints, oldest first: renamed into place, with their state.json."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if p.name.startswith(_PREFIX) and p.name[len(_PREFIX) :].isdigit()]
        return sorted((p for p in found if (p / "state.json").is_file()), key=lambda p: int(p.name[len(_PREFIX) :]))

    def latest(self) -> Path | None:
        """The newest complete checkpoint, after removing what a killed job left half-written."""
        if self.root.is_dir():
            for stale in self.root.glob("*.tmp*"):
                shutil.rmtree(stale, ignore_errors=True)
        done = self.complete()
        return done[-1] if done else None

    def save(self, step: int, tensors: dict[str, torch.Tensor], objects: dict, state: dict) -> Path:
        """Write one checkpoint atomically; on any OSError (disk full, permissions) the older ones stay intact."""
        final = self.root / f"{_PREFIX}{step:09d}"
        if (final / "state.json").is_file():
            return final  # a step is written once: a resumed job reaching it again holds the same state
        tmp = self.root / f"{final.name}.tmp{os.getpid()}"
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp / "weights.safetensors")
            torch.save(objects, tmp / "trainer.pt")
            meta = {"version": CHECKPOINT_VERSION, "kind": self.kind, "step": step, **state}
            (tmp / "state.json").write_text(json.dumps(meta) + "\n")
            for name in ("weights.safetensors", "trainer.pt", "state.json"):
                _fsync(tmp / name)
            tmp.rename(final)
            _fsync(self.root)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise SuiteError(
                f"could not write checkpoint {final} ({exc.strerror or exc}); older ones are intact"
            ) from None
        for old in self.complete()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def check(self, path: str | Path) -> dict:
        """The state of one checkpoint; a version or trainer mismatch is a one-line SuiteError naming the file."""
        state_file = Path(path) / "state.json"
        try:
            state = json.loads(state_file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SuiteError(f"{state_file}: unreadable checkpoint state ({exc})") from None
        if state.get("version") != CHECKPOINT_VERSION or state.get("kind") != self.kind:
            raise SuiteError(
                f"{state_file}: checkpoint of {state.get('kind')!r} version {state.get('version')!r}, this code "
                f"resumes {self.kind!r} version {CHECKPOINT_VERSION}; move {Path(path).parent} away to start afresh"
            )
        return state

    def load(self, path: str | Path) -> tuple[dict[str, torch.Tensor], dict, dict]:
        """(tensors, objects, state) of one checkpoint, checked as `check` does."""
        path = Path(path)
        state = self.check(path)
        tensors = load_file(path / "weights.safetensors")
        objects = torch.load(path / "trainer.pt", map_location="cpu", weights_only=True)
        return tensors, objects, state

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
