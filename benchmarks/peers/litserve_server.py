"""LitServe serving the exported model: batching in LitServe, an image posted as a multipart file (LitServe's docs).

PEER_MODEL_DIR=... python litserve_server.py PORT
"""

import sys

import litserve as ls
import numpy as np
from common import MAX_BATCH, MAX_WAIT_MS, infer, preprocess, session, top5


class ClassifierAPI(ls.LitAPI):
    def setup(self, device):
        self.sess = session()

    def decode_request(self, request):
        return preprocess(request["image"].file.read())

    def batch(self, inputs):
        return np.stack(inputs)

    def predict(self, x):
        return infer(self.sess, x)

    def unbatch(self, output):
        return list(output)

    def encode_response(self, output):
        return {"predictions": top5(output)}


if __name__ == "__main__":
    api = ClassifierAPI(max_batch_size=MAX_BATCH, batch_timeout=MAX_WAIT_MS / 1000)
    ls.LitServer(api, accelerator="cpu", workers_per_device=1).run(port=int(sys.argv[1]), generate_client_file=False)
