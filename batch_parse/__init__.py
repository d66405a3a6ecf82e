"""batch-parse: face parsing (STN-iCNN) of image corpora on Ray.

Python API (facer's shape): `load_detector(name)`, `load_parser(name)`, then
`parser.parse_faces(images, detector.detect(images))`; `open_output(path)` reads what a job wrote
(output/dataset.py). Imported lazily: the CLI must start without loading torch.
"""

__all__ = ["load_detector", "load_parser", "open_output"]


def __getattr__(name: str):
    if name == "load_detector":
        from batch_parse.faces import load_detector

        return load_detector
    if name == "load_parser":
        from batch_parse.model import load_parser

        return load_parser
    if name == "open_output":
        from batch_parse.output.dataset import open_output

        return open_output
    raise AttributeError(name)
