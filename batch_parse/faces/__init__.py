"""Faces in photos: detection with five landmarks (MTCNN) and alignment to the parser's frame.

Imported lazily: `batch_parse.faces.policy` (the inference options and their checks) must load
without torch, for `batch-parse validate` and the CLI's argument checks.
"""

__all__ = ["Detections", "DetectorError", "FaceDetector", "load_detector"]


def __getattr__(name: str):
    if name in __all__:
        from batch_parse.faces import detector

        return getattr(detector, name)
    raise AttributeError(name)
