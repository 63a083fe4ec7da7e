"""`madapt export`: an adaptor as a sentence-transformers model folder, or as an ONNX file.

Both formats carry one program (:mod:`madapt_cli.pipelines.export_module`): normalise, f, keep
the first ``dim`` coordinates, re-normalise. It is built from the adaptor's own module, then
checked against :meth:`Adaptor.transform` on random vectors before anything is written, so an
export that would give other vectors than `madapt encode` is never left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from madapt_cli import __version__
from madapt_cli.errors import InputError, MadaptError
from madapt_cli.methods.adaptor import Adaptor
from madapt_cli.methods.pca import PCAMap
from madapt_cli.methods.smec_module import SMECModule
from madapt_cli.pipelines import export_module
from madapt_cli.pipelines.encode import provider_for_adaptor, recorded_keywords
from madapt_cli.training.modules import ACTIVATIONS, ResidualMLP
from madapt_cli.util.files import check_output, staged_output, staging_path

FORMATS = ("sentence-transformers", "onnx")
#: the file name and class the exported folder's modules.json refers to
MODULE_FILE, MODULE_CLASS = "madapt_adaptor.py", "MadaptAdaptor"
#: what `madapt export` promises: the exported vectors equal Adaptor.transform's within this
TOLERANCE = 1e-5
ONNX_OPSET = 17
ONNX_PRODUCER = "madapt"


@dataclass
class ExportResult:
    format: str
    out: Path
    adaptor: str
    method: str
    dimension: int  # D, what goes in
    dim: int  # what comes out
    max_error: float  # largest |exported - Adaptor.transform| on the check vectors
    seconds: float


def _result(
    to: str, out: Path, adaptor: Adaptor, dim: int, error: float, started: float
) -> ExportResult:
    return ExportResult(
        to,
        out,
        adaptor.name,
        adaptor.method,
        adaptor.dimension,
        dim,
        error,
        time.perf_counter() - started,
    )


def check_format(to: str) -> str:
    if to not in FORMATS:
        raise InputError(f"--to {to!r} is not a format madapt exports: use {', '.join(FORMATS)}")
    return to


def check_export_dim(adaptor: Adaptor, dim: int | None) -> int:
    if dim is None:
        return adaptor.dimension
    if not 1 <= dim <= adaptor.dimension:
        raise InputError(
            f"--dim {dim} is out of range 1..{adaptor.dimension} (adaptor '{adaptor.name}' "
            f"gives {adaptor.dimension}-d vectors)"
        )
    return int(dim)


# --- the program ---------------------------------------------------------------------------
def _block(g: nn.Sequential, masked: bool) -> dict[str, Any]:
    linears = [layer for layer in g if isinstance(layer, nn.Linear)]
    names = {cls: name for name, cls in ACTIVATIONS.items()}
    activations = [names[type(layer)] for layer in g if type(layer) in names]
    return {
        "widths": [linears[0].in_features] + [layer.out_features for layer in linears],
        "activation": activations[0] if activations else "gelu",
        "masked": masked,
    }


def core_program(adaptor: Adaptor, dim: int) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The export program's spec (JSON) and weights (by :class:`AdaptorCore`'s names) that
    compute ``adaptor.transform(x, dim)``. :class:`InputError` for a module it cannot read."""
    module = adaptor.module
    spec: dict[str, Any] = {
        "dimension": adaptor.dimension,
        "dim": dim,
        "center": False,
        "rotate": False,
        "blocks": [],
        "permute": False,
    }
    state: dict[str, torch.Tensor] = {}
    blocks: list[tuple[nn.Sequential, torch.Tensor | None]] = []
    rotation: torch.Tensor | None = None
    if isinstance(module, PCAMap):
        spec.update(center=True, rotate=True)
        state.update(mean=module.mean, rotation=module.components)
    elif isinstance(module, ResidualMLP):
        if not adaptor.keeps_start(dim):  # else the start alone: the rotation (or identity)
            blocks.append((module.g, None))
        rotation = module.rotation
    elif isinstance(module, SMECModule):
        blocks.extend((stage.residual.g, stage.writes) for stage in module.stages)
        spec["permute"] = True
        state["permutation"] = module.order()
        rotation = module.rotation
    else:
        raise InputError(
            f"adaptor '{adaptor.name}': madapt cannot export a {adaptor.method} adaptor "
            f"({type(module).__name__})"
        )
    if rotation is not None:
        spec["rotate"] = True
        state["rotation"] = rotation
    for index, (g, writes) in enumerate(blocks):
        spec["blocks"].append(_block(g, writes is not None))
        for key, tensor in g.state_dict().items():
            state[f"blocks.{index}.g.{key}"] = tensor
        if writes is not None:
            state[f"blocks.{index}.writes"] = writes
    state = {key: tensor.detach().cpu().contiguous().clone() for key, tensor in state.items()}
    return spec, state


def build_core(adaptor: Adaptor, dim: int) -> tuple[export_module.AdaptorCore, float]:
    """The adaptor as an :class:`AdaptorCore`, and its largest difference from
    :meth:`Adaptor.transform` on random vectors (a :class:`MadaptError` above
    :data:`TOLERANCE`: a bug, never written)."""
    spec, state = core_program(adaptor, dim)
    core = export_module.AdaptorCore(spec)
    core.load_state_dict(state, strict=True)
    core.eval()
    probe = torch.randn(256, adaptor.dimension, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = core(probe).numpy()
    error = _max_error(ours, adaptor.transform(probe.numpy(), dim=dim))
    return core, error


def _max_error(ours: np.ndarray, theirs: np.ndarray) -> float:
    error = float(np.abs(ours - theirs).max()) if ours.size else 0.0
    if ours.shape != theirs.shape or not error <= TOLERANCE:
        raise MadaptError(
            f"the exported adaptor differs from madapt's by {error:.3g} (> {TOLERANCE}); "
            "nothing was written. Please report this.",
            exit_code=1,
        )
    return error


def _spec_record(adaptor: Adaptor, spec: dict[str, Any]) -> dict[str, Any]:
    """The export's provenance, kept beside the program in the folder's module config."""
    return {
        **spec,
        "adaptor": adaptor.name,
        "method": adaptor.method,
        "fingerprint": adaptor.fingerprint,
        "base_provider": adaptor.config.get("base_provider"),
        "base_model": adaptor.config.get("base_model"),
        "madapt_version": __version__,
    }


# --- sentence-transformers -----------------------------------------------------------------
def _local_base(adaptor: Adaptor) -> str:
    """The base model's local path; :class:`InputError` for an API base."""
    provider = adaptor.config.get("base_provider")
    model = adaptor.config.get("base_model")
    if provider != "local" or not model:
        raise InputError(
            f"adaptor '{adaptor.name}' was trained on {provider or 'unrecorded'} vectors "
            f"({model or 'no model recorded'}): --to sentence-transformers needs a local "
            "sentence-transformers base; use --to onnx for the adaptor alone"
        )
    # refuses recorded settings the local provider cannot reproduce, before any loading
    provider_for_adaptor(adaptor, options={"device": "cpu"}).close()
    from madapt_cli.providers.local import resolve_local_model

    return resolve_local_model(model)


def _prompts(adaptor: Adaptor, base_prompts: dict[str, str]) -> dict[str, str]:
    """The folder's prompts: the recorded query/document prompts (none recorded: none),
    beside the base model's prompts of other names."""
    keywords = recorded_keywords(adaptor)
    prompts = {k: v for k, v in base_prompts.items() if k not in ("query", "document")}
    for role in ("query", "document"):
        if keywords.get(f"{role}_prompt"):
            prompts[role] = keywords[f"{role}_prompt"]
    return prompts


def export_sentence_transformers(
    adaptor_path: Path,
    out: Path,
    *,
    dim: int | None = None,
    overwrite: bool = False,
    on_progress: Callable[[str], None] | None = None,
) -> ExportResult:
    """Write a sentence-transformers folder at ``out``: the base model's modules, then
    :class:`MadaptAdaptor` (f, cut to ``dim``, re-normalised), weights in safetensors."""
    started = time.perf_counter()
    say = on_progress or (lambda _: None)
    adaptor = Adaptor.load(adaptor_path)
    dim = check_export_dim(adaptor, dim)
    base_path = _local_base(adaptor)
    check_output(out, "export", overwrite=overwrite, inputs=[adaptor_path, base_path])
    core, error = build_core(adaptor, dim)
    say(f"loading {adaptor.config['base_model']}")
    for variable in ("HF_HUB_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS"):
        os.environ.setdefault(variable, "1")  # offline, and stderr kept for our own lines
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()

    try:
        base = SentenceTransformer(base_path, device="cpu")
    except Exception as error:  # a folder that is no sentence-transformers model: say so
        reason = " ".join(str(error).split())
        raise InputError(f"cannot load the base model from {base_path}: {reason}") from None
    getter = getattr(base, "get_embedding_dimension", None) or base.get_sentence_embedding_dimension
    if getter() != adaptor.dimension:
        raise InputError(
            f"adaptor '{adaptor.name}' takes {adaptor.dimension}-d vectors but {base_path} "
            f"gives {getter()}-d ones"
        )
    spec, _ = core_program(adaptor, dim)
    module = export_module.MadaptAdaptor(_spec_record(adaptor, spec))
    module.core.load_state_dict(core.state_dict())
    with staged_output(out, "export", overwrite=overwrite, inputs=[adaptor_path]) as staging:
        say(f"writing {out}")
        base.save(str(staging), create_model_card=False, safe_serialization=True)
        _append_module(staging, module)
        _set_prompts(staging, _prompts(adaptor, dict(base.prompts or {})))
        _write_readme(staging, adaptor, dim)
        _umask_modes(staging)
    return _result("sentence-transformers", out, adaptor, dim, error, started)


def _append_module(folder: Path, module: export_module.MadaptAdaptor) -> None:
    modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
    index = len(modules)
    path = f"{index}_{MODULE_CLASS}"
    (folder / path).mkdir()
    module.save(str(folder / path), safe_serialization=True)
    modules.append(
        {
            "idx": index,
            "name": str(index),
            "path": path,
            "type": f"{Path(MODULE_FILE).stem}.{MODULE_CLASS}",
        }
    )
    (folder / "modules.json").write_text(json.dumps(modules, indent=2) + "\n", encoding="utf-8")
    shutil.copyfile(export_module.__file__, folder / MODULE_FILE)


def _umask_modes(folder: Path) -> None:
    """Give every file the mode a new file gets here: safetensors writes its files 0600, and
    a model folder is meant to be copied and served, often by another user."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(0o666 & ~umask)


def _set_prompts(folder: Path, prompts: dict[str, str]) -> None:
    path = folder / "config_sentence_transformers.json"
    config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    config["prompts"] = prompts
    if config.get("default_prompt_name") not in prompts:
        config["default_prompt_name"] = None
    config["truncate_dim"] = None  # the cut is the adaptor module's, re-normalised
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _write_readme(folder: Path, adaptor: Adaptor, dim: int) -> None:
    base = adaptor.config.get("base_model")
    (folder / "README.md").write_text(
        f"# {adaptor.name} ({dim}-d)\n\n"
        f"{base} followed by the madapt adaptor '{adaptor.name}' ({adaptor.method}), cut to "
        f"{dim} dimensions and re-normalised (unit vectors). Exported by madapt "
        f"{__version__}; needs torch and sentence-transformers only. The adaptor is a custom "
        f"module ({MODULE_FILE}), so loading needs `trust_remote_code=True`:\n\n"
        "```python\nfrom sentence_transformers import SentenceTransformer\n\n"
        "model = SentenceTransformer('PATH', trust_remote_code=True)\n"
        "queries = model.encode_query(['a question'])\n"
        "documents = model.encode_document(['a passage'])\n```\n",
        encoding="utf-8",
    )


# --- ONNX ----------------------------------------------------------------------------------
def _check_onnx_out(out: Path, overwrite: bool) -> None:
    """Refuse an --out that is not a FILE.onnx madapt may write (or replace)."""
    if out.suffix != ".onnx":
        raise InputError(f"--out {out}: must end in .onnx")
    if out.is_symlink():
        raise InputError(f"--out {out} is a symbolic link; give the file itself")
    if out.is_dir():
        raise InputError(f"--out {out} is a folder, not a .onnx file")
    if not out.parent.is_dir():
        raise InputError(f"--out {out}: no such folder {out.parent}")
    if out.exists():
        if _onnx_producer(out) != ONNX_PRODUCER:
            raise InputError(
                f"--out {out} already exists and madapt did not write it: choose another file"
            )
        if not overwrite:
            raise InputError(f"--out {out} already exists; pass --overwrite to replace it")
    if not os.access(out.parent, os.W_OK | os.X_OK):
        from madapt_cli.errors import EnvironmentFailure

        raise EnvironmentFailure(f"--out {out}: cannot write in {out.parent}")


def _onnx_producer(path: Path) -> str | None:
    onnx = _require("onnx")
    try:
        return str(onnx.load(str(path), load_external_data=False).producer_name)
    except Exception:
        return None


def _require(name: str) -> Any:
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        raise InputError(
            f"--to onnx needs the {name} package: pip install 'madapt[export]'"
        ) from None


def export_onnx(
    adaptor_path: Path,
    out: Path,
    *,
    dim: int | None = None,
    overwrite: bool = False,
) -> ExportResult:
    """Write ``out`` (FILE.onnx): input ``embedding`` (batch, D) float32, output
    ``adapted`` (batch, dim) unit float32; checked with onnxruntime before it is renamed
    into place."""
    started = time.perf_counter()
    adaptor = Adaptor.load(adaptor_path)
    dim = check_export_dim(adaptor, dim)
    onnx = _require("onnx")
    runtime = _require("onnxruntime")
    _check_onnx_out(out, overwrite)
    core, _ = build_core(adaptor, dim)
    staging = staging_path(out)
    try:
        with warnings.catch_warnings():
            # the TorchScript exporter: offline with onnx alone (dynamo's needs onnxscript)
            warnings.simplefilter("ignore")
            torch.onnx.export(
                core,
                (torch.randn(2, adaptor.dimension),),
                str(staging),
                dynamo=False,
                input_names=["embedding"],
                output_names=["adapted"],
                dynamic_axes={"embedding": {0: "batch"}, "adapted": {0: "batch"}},
                opset_version=ONNX_OPSET,
            )
        model = onnx.load(str(staging))
        model.producer_name, model.producer_version = ONNX_PRODUCER, __version__
        spec, _ = core_program(adaptor, dim)
        for key, value in _spec_record(adaptor, spec).items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, json.dumps(value)
        onnx.checker.check_model(model)
        onnx.save(model, str(staging))
        error = _check_onnx(runtime, staging, adaptor, dim)
        os.replace(staging, out)
    finally:
        staging.unlink(missing_ok=True)
    return _result("onnx", out, adaptor, dim, error, started)


def _check_onnx(runtime: Any, path: Path, adaptor: Adaptor, dim: int) -> float:
    session = runtime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probe = np.random.default_rng(0).normal(size=(257, adaptor.dimension)).astype(np.float32)
    (ours,) = session.run(["adapted"], {"embedding": probe})
    return _max_error(ours, adaptor.transform(probe, dim=dim))
