"""Post-training static int8 quantisation of an exported scoring file, with ONNX Runtime's tools.

The convolutions get int8 weights (one scale per output channel) and uint8
activations, calibrated on normal training images, in the QDQ format:
``QuantizeLinear`` / ``DequantizeLinear`` pairs around float operators, which
ONNX Runtime and OpenVINO both fuse into integer kernels. Everything else stays
float32: the exact uint8 resize (its matrix products are not convolutions),
the feature normalisation and the neighbour search, whose distances between
close features int8 would blur. Convolutions named in ``keep_float32`` stay
float32 too.
"""

import numpy as np


class _ImageBatches:
    """ONNX Runtime's calibration reader: the calibration images, batch by batch."""

    def __init__(self, images, batch_size):
        self._batches = iter([images[start : start + batch_size] for start in range(0, len(images), batch_size)])

    def get_next(self):
        batch = next(self._batches, None)
        return None if batch is None else {"images": batch}


def convolution_names(model):
    """Names of the model's ``Conv`` nodes, in graph order (which is execution order).

    Examples
    --------
    >>> import onnx
    >>> from onnx import helper
    >>> node = helper.make_node("Conv", ["x", "w"], ["y"], name="stem")
    >>> graph = helper.make_graph([node], "g", [], [])
    >>> convolution_names(helper.make_model(graph))
    ['stem']
    """
    return [node.name for node in model.graph.node if node.op_type == "Conv"]


def quantize_int8(float_path, int8_path, calibration_images, *, keep_float32=(), batch_size=16):
    """Write the int8 version of the float32 scoring file ``float_path`` to ``int8_path``.

    Parameters
    ----------
    float_path, int8_path : str or path-like
    calibration_images : ndarray of uint8, shape (n, H, W, C)
        Normal training images, in the file's input layout.
    keep_float32 : sequence of str
        ``Conv`` node names (see :func:`convolution_names`) left in float32.
    batch_size : int
        Images per calibration pass.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(
        str(float_path),
        str(int8_path),
        _ImageBatches(np.ascontiguousarray(calibration_images), batch_size),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["Conv"],
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=list(keep_float32),
        calibrate_method=CalibrationMethod.MinMax,
    )
