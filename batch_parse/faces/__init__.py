"""Faces in photos: detection with five landmarks (MTCNN) and alignment to the parser's frame."""

from batch_parse.faces.detector import Detections, DetectorError, FaceDetector, load_detector

__all__ = ["Detections", "DetectorError", "FaceDetector", "load_detector"]
