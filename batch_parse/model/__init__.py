"""STN-iCNN: the network, its weights, and the inference API (`load_parser`)."""

from batch_parse.model.parser import FaceParse, FaceParser, load_parser

__all__ = ["FaceParse", "FaceParser", "load_parser"]
