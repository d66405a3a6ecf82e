"""batch-parse: face parsing (STN-iCNN) of image corpora on Ray.

Python API (facer's shape): `load_detector(name)`, `load_parser(name)`, then
`parser.parse_faces(images, detector.detect(images))`; `open_output(path)` reads what a job wrote
(output/dataset.py). Imported lazily: the CLI must start without loading torch.

`__version__` is pyproject.toml's version (the one place it is written): read from this checkout's
pyproject.toml when the package runs from a source tree (an editable install's metadata keeps the
version it was installed with), else from the installed distribution's metadata.
"""

__all__ = ["__version__", "load_detector", "load_parser", "open_output"]


def _version() -> str:
    import re
    from pathlib import Path

    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    try:
        text = pyproject.read_text()
    except OSError:
        text = ""
    project = re.search(r"^\[project\]$(.*?)(?=^\[|\Z)", text, re.MULTILINE | re.DOTALL)
    if project and re.search(r'^name\s*=\s*"batch-parse"\s*$', project.group(1), re.MULTILINE):
        found = re.search(r'^version\s*=\s*"([^"]+)"\s*$', project.group(1), re.MULTILINE)
        if found:
            return found.group(1)
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("batch-parse")
    except PackageNotFoundError:
        return "0+unknown"  # neither a source tree nor installed (a copied package folder)


__version__ = _version()


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
