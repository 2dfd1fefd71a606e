"""The FID Inception network (TF "inception-2015-12-05" via torch-fidelity), as used by published FID numbers."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from pydantic import BaseModel, Field
from torch import Tensor, nn

from unpaired.plugin_api import hookimpl

WEIGHTS_ENV = "UNPAIRED_FID_WEIGHTS"
FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
"""torch.load's own switch: weights only, even where the caller passes weights_only=False."""


class InceptionParams(BaseModel):
    weights: Path | None = Field(
        None, description=f"local weights file in torch-fidelity's format (default: ${WEIGHTS_ENV}; else torch-fidelity downloads them)"
    )


OFFICIAL_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"
"""The name of torch-fidelity's weights file, as it downloads and caches it."""
WHERE_TO_GET_WEIGHTS = (
    f"Download {OFFICIAL_WEIGHTS} once on a machine with internet access (torch-fidelity "
    "caches it in ~/.cache/torch/hub/checkpoints), then point to it with "
    f"eval.feature_extractor: {{name: inception, weights: PATH}} or {WEIGHTS_ENV}=PATH."
)


def plain_state_dict(path: Path) -> dict[str, Tensor]:
    """The weights in ``path``, loaded without running code from the file (``weights_only``); a file that is not a plain
    state dict (names -> tensors) raises ``ValueError`` naming it. torch-fidelity would unpickle it whole."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a pickle of other objects, a torn or foreign file
        first = (str(error).strip().splitlines() or [""])[0]
        raise ValueError(f"{path} is not a plain weights file ({type(error).__name__}: {first}); unpaired loads no code from weights") from None
    if not isinstance(state, dict) or not state or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise ValueError(f"{path} holds {type(state).__name__}, not a state dict of named tensors: name torch-fidelity's Inception weights")
    return state


@contextlib.contextmanager
def weights_only_loading() -> Iterator[None]:
    """Every ``torch.load`` in the block loads weights only, whatever its caller asks (torch-fidelity asks for pickle)."""
    saved = os.environ.get(FORCE_WEIGHTS_ONLY)
    os.environ[FORCE_WEIGHTS_ONLY] = "1"
    try:
        yield
    finally:
        if saved is None:
            del os.environ[FORCE_WEIGHTS_ONLY]
        else:
            os.environ[FORCE_WEIGHTS_ONLY] = saved


def named_weights(params: InceptionParams) -> Path | None:
    """The weights file ``params`` name, else ``$UNPAIRED_FID_WEIGHTS``; None when neither does (torch-fidelity's download)."""
    named = params.weights or os.environ.get(WEIGHTS_ENV)
    return Path(named) if named else None


def weights_file(params: InceptionParams) -> Path:
    """The weights file an extractor built from ``params`` loads: the one named, else torch-fidelity's download in torch
    hub's cache."""
    return named_weights(params) or Path(torch.hub.get_dir()) / "checkpoints" / OFFICIAL_WEIGHTS


@functools.cache
def _sha256(path: Path, size: int, modified_ns: int) -> str:
    """The file's SHA-256 (once per process for a file unchanged since: 0.5 s for Inception's 96 MB on a slow core)."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


class InceptionFeatures(nn.Module):
    """uint8 RGB images (N, 3, H, W) of any size -> 2048-d pool features (N, 2048); resizing to 299 px is done inside."""

    num_features = 2048

    def __init__(self, params: InceptionParams):
        super().__init__()
        path = named_weights(params)
        if path is not None and not path.is_file():
            raise FileNotFoundError(f"no Inception weights file at {path}. {WHERE_TO_GET_WEIGHTS}")
        if path is not None:
            plain_state_dict(path)  # refused here, with its name, before anything unpickles it
        from torchmetrics.image.fid import NoTrainInceptionV3  # imported here: torchmetrics takes seconds to import

        try:
            with weights_only_loading():  # also torch hub's cached download
                self.network = NoTrainInceptionV3(
                    name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=None if path is None else str(path)
                )
        except Exception as error:  # typically: no internet to download the weights
            raise RuntimeError(f"{type(error).__name__}: {error}. {WHERE_TO_GET_WEIGHTS}") from error
        self.cache_identity = self.cache_identity_of(params)
        """Features differ by weights: real-image features are cached, and scores told apart, by the weights' SHA-256."""

    @staticmethod
    def cache_identity_of(params: InceptionParams) -> str:
        """The :attr:`cache_identity` an extractor built from ``params`` has, known without loading it: the SHA-256 of
        the weights file it loads, so the same weights anywhere (another path, machine or setting) are the same
        evaluation. Raises ``FileNotFoundError`` where that file is not (reading scores on a machine without it)."""
        path = weights_file(params)
        if not path.is_file():
            raise FileNotFoundError(f"the Inception weights are not at {path} here. {WHERE_TO_GET_WEIGHTS}")
        stat = path.stat()
        return f"weights sha256 {_sha256(path.resolve(), stat.st_size, stat.st_mtime_ns)}"

    def forward(self, images: Tensor) -> Tensor:
        return self.network(images).reshape(images.shape[0], -1)


@hookimpl
def unpaired_register_feature_extractors(register):
    register("inception", InceptionFeatures, InceptionParams, "FID Inception-v3 (torch-fidelity), 2048-d pool features", default=True)
