"""The Open Inference Protocol: its transport-free core (``oip``), its binary encodings (``wire``), the gRPC
server (``grpc_server``) and the ``/v2`` HTTP routes (``v2_http``); all go down the same classify path."""
