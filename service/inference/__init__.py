"""Inference without a framework: a stored model's runtime chosen and measured on this machine
(``selection``, ``runtimes``), the classifier (``classifier``), the micro-batcher every request shares
(``batching``) and one image's scores turned into its answer (``answers``).

Importing it loads neither BentoML nor FastAPI nor matplotlib (``tests/test_layout.py`` checks).
"""

from service.inference.batching import MicroBatcher
from service.inference.classifier import Classifier, build_classifier
from service.inference.options import InferenceOptions

__all__ = ["Classifier", "InferenceOptions", "MicroBatcher", "build_classifier"]
