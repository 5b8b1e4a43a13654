# NVIDIA's Triton HTTP client, unmodified, against the serving service's Open Inference
# Protocol API. Usage: oip_client.py HOST:PORT MODEL. Prints what it saw as JSON.
# The platform's token, from MLOPS_TOKEN, goes in the headers the client lets callers add.
import json, os, sys

import numpy as np
import tritonclient.http as httpclient

url, model = sys.argv[1], sys.argv[2]
headers = {"Authorization": "Bearer " + os.environ["MLOPS_TOKEN"]} if os.environ.get("MLOPS_TOKEN") else None
client = httpclient.InferenceServerClient(url=url)
assert client.is_server_live(), "not live"
assert client.is_server_ready(), "not ready"
assert client.is_model_ready(model, headers=headers), "model not ready"
metadata = client.get_model_metadata(model, headers=headers)

amount = httpclient.InferInput("amount", [2], "FP64")
amount.set_data_from_numpy(np.array([80.0, 20.0]), binary_data=False)
currency = httpclient.InferInput("currency", [2], "BYTES")
currency.set_data_from_numpy(np.array([b"USD", b"EUR"], dtype=np.object_), binary_data=False)
outputs = [httpclient.InferRequestedOutput(name, binary_data=False) for name in ("probability", "label")]
result = client.infer(model, [amount, currency], request_id="triton-1", outputs=outputs, headers=headers)

try:
    client.infer("no-such-model", [amount, currency], outputs=outputs, headers=headers)
    refused = None
except httpclient.InferenceServerException as error:
    refused = error.message()

print(json.dumps({
    "inputs": [i["name"] for i in metadata["inputs"]],
    "versions": metadata["versions"],
    "probability": result.as_numpy("probability").tolist(),
    "label": result.as_numpy("label").tolist(),
    "response": result.get_response(),
    "refused": refused,
}))
