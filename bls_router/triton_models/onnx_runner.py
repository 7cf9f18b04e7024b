"""Triton python-backend model that runs `model.onnx` from its version folder with ONNX Runtime.

This CPU build of Triton has no onnxruntime backend, so the router and T1 models are served by
this adapter. Its tensors are exactly the ONNX graph's, so the same repository can switch to
`platform: "onnxruntime_onnx"` on a stock NGC image (the `--target ngc` export) unchanged.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

from bls_router.onnx_batch import split_outputs, stack_requests


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.name = config["name"]
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        if not os.path.exists(path):
            raise pb_utils.TritonModelException(f"{self.name}: {path} not found")
        options = ort.SessionOptions()
        threads = config.get("parameters", {}).get("intra_op_threads", {}).get("string_value")
        if threads:
            options.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input_names = [i["name"] for i in config["input"]]
        self.output_names = [o["name"] for o in config["output"]]
        graph_inputs = {i.name for i in self.session.get_inputs()}
        graph_outputs = {o.name for o in self.session.get_outputs()}
        # Fail the load, naming the model, if config and graph disagree (never at request time).
        if set(self.input_names) != graph_inputs or not set(self.output_names) <= graph_outputs:
            raise pb_utils.TritonModelException(
                f"{self.name}: config tensors {self.input_names}->{self.output_names} do not match "
                f"model.onnx {sorted(graph_inputs)}->{sorted(graph_outputs)}"
            )

    def execute(self, requests):
        """The requests the dynamic batcher gathered, in one ONNX Runtime run when their inputs
        stack (padded along the sequence axis: see stack_requests); one run each otherwise."""
        feeds = []
        responses = [None] * len(requests)
        for index, request in enumerate(requests):
            try:
                tensors = {name: pb_utils.get_input_tensor_by_name(request, name) for name in self.input_names}
                feeds.append((index, {name: tensor.as_numpy() for name, tensor in tensors.items()}))
            except Exception as err:
                responses[index] = self._error(err)
        if len(feeds) > 1:
            try:
                batched = stack_requests([feed for _, feed in feeds])
                outputs = self.session.run(self.output_names, batched)
                for (index, feed), rows in zip(feeds, split_outputs(outputs, [feed for _, feed in feeds])):
                    responses[index] = self._response(rows)
                return responses
            except Exception:  # e.g. one request's bad tensor: run each alone, so only it fails
                pass
        for index, feed in feeds:
            try:
                responses[index] = self._response(self.session.run(self.output_names, feed))
            except Exception as err:  # one bad request must not fail the others in the batch
                responses[index] = self._error(err)
        return responses

    def _response(self, outputs):
        tensors = [pb_utils.Tensor(name, np.ascontiguousarray(out)) for name, out in zip(self.output_names, outputs)]
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def _error(self, err):
        error = pb_utils.TritonError(f"{self.name}: {type(err).__name__}: {err}", pb_utils.TritonError.INVALID_ARG)
        return pb_utils.InferenceResponse(error=error)

