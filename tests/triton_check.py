"""Run by a Python that has Triton's own client (tritonclient[grpc]) and not torchwire:
calls a torchwire server over the v2 protocol and prints what it got, as JSON.

    python triton_check.py ADDRESS MODEL INPUTS.npy
"""

import json
import sys

import numpy as np
import tritonclient.grpc as triton

address, model, inputs_path = sys.argv[1:4]
assert not any(name.startswith("torchwire") for name in sys.modules)
client = triton.InferenceServerClient(address)
batch = np.load(inputs_path)
infer_input = triton.InferInput("input", list(batch.shape), "FP32")
infer_input.set_data_from_numpy(batch)
outputs = [triton.InferRequestedOutput(name) for name in ("output", "class")]
result = client.infer(model, [infer_input], outputs=outputs)
metadata = client.get_model_metadata(model, as_json=True)
print(
    json.dumps(
        {
            "live": client.is_server_live(),
            "ready": client.is_model_ready(model),
            "inputs": metadata["inputs"],
            "output": result.as_numpy("output").tolist(),
            "class": result.as_numpy("class").tolist(),
        }
    )
)
