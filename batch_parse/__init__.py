"""batch-parse: face parsing (STN-iCNN) of image corpora on Ray.

Python API (facer's shape): `load_detector(name)`, `load_parser(name)`, then
`parser.parse_faces(images, detector.detect(images))`. Imported lazily: the CLI must start
without loading torch.
"""

__all__ = ["load_detector", "load_parser"]


def __getattr__(name: str):
    if name == "load_detector":
        from batch_parse.faces import load_detector

        return load_detector
    if name == "load_parser":
        from batch_parse.model import load_parser

        return load_parser
    raise AttributeError(name)
