"""The HTTP edge: the FastAPI routes (``app``, ``admin``), request parsing and schemas, the classify
operations the routes and the BentoML API methods share (``classify``), errors mapped to statuses
(``errors``), and the limits no client gets past (``limits``, ``connections``, ``route_labels``)."""
