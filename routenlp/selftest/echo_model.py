"""Triton python-backend model `echo`: returns TEXT unchanged and its length in characters.

One response per request, in order; a bad request (invalid UTF-8) gets its own INVALID_ARG error
and never fails the rest of the batch.
"""

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                texts = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy()
                decoded = [item.decode("utf-8") for item in texts.reshape(-1)]
                lengths = np.array([len(t) for t in decoded], dtype=np.int64).reshape(texts.shape)
                responses.append(
                    pb_utils.InferenceResponse(
                        output_tensors=[pb_utils.Tensor("OUTPUT", texts), pb_utils.Tensor("LENGTH", lengths)]
                    )
                )
            except UnicodeDecodeError as err:
                responses.append(
                    pb_utils.InferenceResponse(
                        error=pb_utils.TritonError(f"echo: TEXT is not valid UTF-8 ({err.reason})", pb_utils.TritonError.INVALID_ARG)
                    )
                )
        return responses
