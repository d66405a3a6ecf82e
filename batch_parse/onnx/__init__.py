"""ONNX copies of the detector and the parser, and running them in onnxruntime.

`batch-parse export-onnx DIR` writes six graphs and a manifest (`export.py`):

    stage1.onnx      model A: image (N,3,128,128) float 0..1 -> stage-1 logits (N,C,128,128)
    localiser.onnx   model B: stage-1 softmax (N,C,128,128) -> part windows theta (N,6,2,3)
    parts.onnx       model C: part crops (N,6,3,81,81) float 0..1 -> six part logits (N,1+k,81,81)
    mtcnn_pnet.onnx  MTCNN P-Net: pyramid level (N,3,H,W), (pixel - 127.5) / 128 -> face prob, offsets
    mtcnn_rnet.onnx  MTCNN R-Net: 24x24 crops -> face prob, offsets
    mtcnn_onet.onnx  MTCNN O-Net: 48x48 crops -> face prob, offsets, five landmarks (box fractions)
    batch-parse-onnx.json   what they are: model name and weights hash, the model config (sizes,
                     classes, geometry), every input and output, each file's sha256, licences

The graphs are the networks only: detection's pyramid and NMS, alignment, the part windows'
sampling and the paste-back are the product's own code (batch_parse.faces, batch_parse.model.
geometry), which `runtime.load_onnx` runs around the graphs, so an exported copy labels exactly
like the torch model (tests/test_onnx.py). Exported from the inference form of the weights
(BatchNorm folded), in float32.

Imported lazily: onnx and onnxruntime are optional (`pip install batch-parse[onnx]`).
"""

__all__ = ["export_onnx", "load_onnx"]


def __getattr__(name: str):
    if name == "export_onnx":
        from batch_parse.onnx.export import export_onnx

        return export_onnx
    if name == "load_onnx":
        from batch_parse.onnx.runtime import load_onnx

        return load_onnx
    raise AttributeError(name)
