"""A deterministic stand-in for the segmentation model, served by the real Triton server
(Python backend, numpy only) so worker tests can predict every output exactly.

* pure red pixels (R > 200, G < 60, B < 60) are class 1 ("scratch"), pure blue ones class 2
  ("pit"); ``defect_prob`` is 0.95 on them and 0.02 elsewhere;
* ``image_score`` is 0.95 for a tile holding any defect pixel, else 0.05;
* ``ood_score`` (the contract's optional output) is 2.0 for a tile more than half of whose
  pixels are pure green (G > 200, R < 60, B < 60): "unlike the training images"; else 0.25;
* a tile whose first row is all (1, 2, 3) is "slow": its request sleeps SLOW_S seconds, for
  tests that kill or stop a worker mid-inference. It first appends a line to SLOW_LOG (in
  the server's work dir), so a test waits for "the request is inside Triton" as an event.
"""

import time
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

SLOW_S = 3.0
#: <workdir>/models/inspectq_seg/1/model.py -> <workdir>/slow-requests.log
SLOW_LOG = Path(__file__).resolve().parents[3] / "slow-requests.log"


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            images = pb_utils.get_input_tensor_by_name(request, "images").as_numpy()
            red, green, blue = (images[:, c].astype(np.int16) for c in range(3))
            scratch = (red > 200) & (green < 60) & (blue < 60)
            pit = (blue > 200) & (red < 60) & (green < 60)
            class_map = np.where(scratch, 1, np.where(pit, 2, 0)).astype(np.uint8)
            defect = class_map > 0
            prob = np.where(defect, 0.95, 0.02).astype(np.float16)
            score = np.where(defect.reshape(len(images), -1).any(axis=1), 0.95, 0.05)
            green = (green > 200) & (red < 60) & (blue < 60)
            ood = np.where(green.reshape(len(images), -1).mean(axis=1) > 0.5, 2.0, 0.25)
            slow_row = (images[:, 0, 0] == 1) & (images[:, 1, 0] == 2) & (images[:, 2, 0] == 3)
            if slow_row.all(axis=1).any():
                with SLOW_LOG.open("a") as log:
                    log.write(f"{time.time()}\n")
                time.sleep(SLOW_S)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("class_map", class_map),
                pb_utils.Tensor("defect_prob", prob),
                pb_utils.Tensor("image_score", score.astype(np.float32).reshape(-1, 1)),
                pb_utils.Tensor("ood_score", ood.astype(np.float32).reshape(-1, 1)),
            ]))
        return responses
