"""Triton Python-backend model for the CPU repository: serves the GPU repository's
TorchScript file with torch on the CPU.

Each `repository_cpu/inspectq_seg/<N>/model.py` is a link to this file. `execute` gets the
requests that dynamic batching gathered and runs them as ONE forward pass (concatenate,
infer, split): without that, batching would gain nothing.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

# The stub's interpreter ignores PYTHONPATH; find the triton_models package through the link.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
from triton_models.verify import check_file


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        torch.set_num_threads(int(params["intra_op_threads"]))
        torch.set_num_interop_threads(int(params["inter_op_threads"]))
        version = args["model_version"]
        path = os.path.normpath(os.path.join(args["model_repository"],
                                             params["torchscript_dir"], version, "model.pt"))
        expected = params.get(f"sha256_v{version}")
        if expected is None:
            raise pb_utils.TritonModelException(
                f"{path}: config has no sha256_v{version} parameter; refusing an unchecked file")
        check_file(path, expected)
        self.model = torch.jit.load(path, map_location="cpu").eval()
        self.output_names = [o["name"] for o in config["output"]]

    def execute(self, requests: list) -> list:
        arrays = [pb_utils.get_input_tensor_by_name(r, "images").as_numpy() for r in requests]
        with torch.inference_mode():
            outputs = [o.numpy() for o in self.model(torch.from_numpy(np.concatenate(arrays)))]
        responses, start = [], 0
        for array in arrays:
            end = start + len(array)
            tensors = [pb_utils.Tensor(name, np.ascontiguousarray(out[start:end]))
                       for name, out in zip(self.output_names, outputs, strict=True)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start = end
        return responses
