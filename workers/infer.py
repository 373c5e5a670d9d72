"""Stage 4: run the tiles through the segmentation model on Triton (gRPC).

The contract (docs/model-contract.md): input ``images`` UINT8 ``[N, 3, 256, 256]``; outputs
``class_map`` UINT8, ``defect_prob`` FP16 (both ``[N, 256, 256]``) and ``image_score`` FP32
``[N, 1]``, and optionally ``ood_score`` FP32 ``[N, 1]`` (out of domain above 1.0); class names
and each version's sha256 in the model config ``parameters``.

The gRPC client is created on first use, in the process that uses it: gRPC channels do not
survive ``fork``, and Celery's prefork pool forks its children after the app is built. After
a connection error the client is dropped and made anew on the next call, so work drains by
itself once Triton is back.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from inspectq.result import ModelInfo

log = logging.getLogger(__name__)

#: gRPC status codes that mean "Triton is down, overloaded or still loading the model":
#: worth retrying later. Anything else is a bug on one side of the contract.
_TRANSIENT = (
    "StatusCode.UNAVAILABLE",
    "StatusCode.DEADLINE_EXCEEDED",
    "StatusCode.RESOURCE_EXHAUSTED",
    "StatusCode.CANCELLED",
    "StatusCode.ABORTED",
    "StatusCode.NOT_FOUND",  # model not (yet) loaded
)


class TritonUnavailable(Exception):
    """Triton could not be reached, is overloaded or has not loaded the model: retry."""


class ModelContractError(Exception):
    """Triton answered, but not as docs/model-contract.md says: retrying will not help."""


@dataclass(frozen=True)
class TileOutputs:
    """The model's answer for N tiles, as numpy arrays (probabilities as float32)."""

    class_map: np.ndarray  # (N, T, T) uint8
    defect_prob: np.ndarray  # (N, T, T) float32
    image_score: np.ndarray  # (N,) float32
    info: ModelInfo
    ood_score: np.ndarray | None = None  # (N,) float32; None when the model has no such output


class TritonModel:
    """One model on one Triton server, with a lazily created client and cached config."""

    def __init__(self, url: str, model_name: str, batch_tiles: int, timeout_s: float) -> None:
        self.url = url
        self.model_name = model_name
        self.batch_tiles = batch_tiles
        self.timeout_s = timeout_s
        self._client: grpcclient.InferenceServerClient | None = None
        self._info: dict[str, ModelInfo] = {}
        self._current: tuple[float, ModelInfo] | None = None  # (read at, info)

    def _connected(self) -> grpcclient.InferenceServerClient:
        if self._client is None:
            self._client = grpcclient.InferenceServerClient(url=self.url)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _translate(self, error: InferenceServerException) -> Exception:
        status = str(error.status())
        if status in _TRANSIENT or "unknown model" in str(error.message()).lower():
            self.close()  # a fresh channel on the next call
            return TritonUnavailable(f"{status}: {error.message()}")
        return ModelContractError(f"{status}: {error.message()}")

    def info(self, version: str) -> ModelInfo:
        """Name, version, sha256 and classes of ``version``, read from Triton once per
        process and version (a new version served later is read when it first answers)."""
        if version not in self._info:
            try:
                reply = self._connected().get_model_config(
                    self.model_name, version, as_json=True, client_timeout=self.timeout_s
                )
            except InferenceServerException as error:
                raise self._translate(error) from error
            params = reply.get("config", {}).get("parameters", {})

            def param(key: str) -> str:
                return str(params.get(key, {}).get("string_value", ""))

            classes = tuple(name.strip() for name in param("classes").split(",") if name.strip())
            if not classes:
                raise ModelContractError("model config has no `classes` parameter")
            self._info[version] = ModelInfo(
                name=self.model_name,
                version=version,
                sha256=param(f"sha256_v{version}"),
                classes=classes,
            )
        return self._info[version]

    def current_info(self, max_age_s: float = 5.0) -> ModelInfo:
        """The info of the newest ready version (what an unversioned request runs).

        Read at most every ``max_age_s``: asking Triton on every job costs a round trip, and
        a version switch only needs to show within seconds (each result still reports the
        version that actually answered).
        """
        if self._current is not None and time.monotonic() - self._current[0] < max_age_s:
            return self._current[1]
        try:
            metadata = self._connected().get_model_metadata(
                self.model_name, as_json=True, client_timeout=self.timeout_s
            )
        except InferenceServerException as error:
            raise self._translate(error) from error
        versions = [str(v) for v in metadata.get("versions", [])]
        if not versions:
            raise TritonUnavailable(f"model {self.model_name} has no ready version")
        info = self.info(max(versions, key=lambda v: int(v) if v.isdigit() else -1))
        self._current = (time.monotonic(), info)
        return info

    def infer(self, tiles: np.ndarray) -> TileOutputs:
        """Run ``tiles`` (``(N, 3, T, T)`` uint8) in requests of at most ``batch_tiles``.

        No output is named in the request, so Triton sends every output the serving version
        has: the optional ``ood_score`` comes when the model has it, with no config lookup
        and no error from a model without it."""
        class_maps, probs, scores, oods = [], [], [], []
        version = ""
        for start in range(0, len(tiles), self.batch_tiles):
            chunk = np.ascontiguousarray(tiles[start:start + self.batch_tiles], dtype=np.uint8)
            images = grpcclient.InferInput("images", list(chunk.shape), "UINT8")
            images.set_data_from_numpy(chunk)
            try:
                result = self._connected().infer(
                    self.model_name, [images], client_timeout=self.timeout_s
                )
            except InferenceServerException as error:
                raise self._translate(error) from error
            version = result.get_response().model_version or version
            class_map = result.as_numpy("class_map")
            prob = result.as_numpy("defect_prob")
            score = result.as_numpy("image_score")
            ood = result.as_numpy("ood_score")
            expected = (len(chunk), chunk.shape[2], chunk.shape[3])
            if (
                class_map is None or prob is None or score is None
                or class_map.shape != expected or prob.shape != expected
                or score.size != len(chunk) or (ood is not None and ood.size != len(chunk))
            ):
                raise ModelContractError("model outputs do not match the contract's shapes")
            class_maps.append(class_map.astype(np.uint8, copy=False))
            probs.append(prob.astype(np.float32))
            scores.append(score.reshape(-1).astype(np.float32))
            oods.append(None if ood is None else ood.reshape(-1).astype(np.float32))
        if not version:
            raise ModelContractError("Triton's response names no model version")
        return TileOutputs(
            class_map=np.concatenate(class_maps),
            defect_prob=np.concatenate(probs),
            image_score=np.concatenate(scores),
            info=self.info(version),
            # all or nothing: a version switch between two requests of one image must not
            # leave some of its tiles unchecked
            ood_score=None if any(o is None for o in oods) else np.concatenate(oods),
        )
