"""Inference in Python, after mmaction2's ``init_recognizer`` / ``inference_recognizer`` (docs/tools.md)."""
from .inference import (Video, inference_recognizer, inference_windows, init_recognizer, input_views, preprocess,
                        ranked_classes, video_scores)

__all__ = ["Video", "init_recognizer", "inference_recognizer", "inference_windows", "input_views", "preprocess",
           "ranked_classes", "video_scores"]
