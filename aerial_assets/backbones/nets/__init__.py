"""One ONNX graph builder per network, each from a plain numpy state dict (no torch, no Dagster).

Every builder has the signature ``build_<name>(sd, input_size, mean, std, bgr) -> onnx.ModelProto``
and produces a graph with the uint8 NHWC ``image`` input and the ``features`` / ``logits`` outputs
described in :mod:`aerial_assets.backbones.onnx_graph`.
"""
