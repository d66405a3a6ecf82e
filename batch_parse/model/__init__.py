"""STN-iCNN: the network, its weights, and the inference API (`load_parser`).

Imported lazily: `batch_parse.model.registry` (weights names and checks) loads without torch.
"""

__all__ = ["FaceParse", "FaceParser", "load_parser"]


def __getattr__(name: str):
    if name in __all__:
        from batch_parse.model import parser

        return getattr(parser, name)
    raise AttributeError(name)
