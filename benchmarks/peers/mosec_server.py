"""Mosec serving the exported model: decoding in its own worker processes, batching in Mosec's Rust front, the
image posted as the raw request body (Mosec's docs: a ``deserialize`` that returns the bytes).

    PEER_MODEL_DIR=... python mosec_server.py --port PORT
"""

import json

import numpy as np
from common import MAX_BATCH, MAX_WAIT_MS, infer, preprocess, session, top5
from mosec import Server, Worker


class Preprocess(Worker):
    def deserialize(self, data: bytes) -> bytes:
        return data

    def forward(self, data: bytes) -> np.ndarray:
        return preprocess(data)


class Inference(Worker):
    def __init__(self):
        super().__init__()
        self.sess = session()

    def forward(self, data: list[np.ndarray]) -> list[dict]:
        return [{"predictions": top5(p)} for p in infer(self.sess, np.stack(data))]

    def serialize(self, data: dict) -> bytes:
        return json.dumps(data).encode()


if __name__ == "__main__":
    server = Server()
    server.append_worker(Preprocess, num=2)
    server.append_worker(Inference, num=1, max_batch_size=MAX_BATCH, max_wait_time=int(MAX_WAIT_MS))
    server.run()
