"""Darknet network → TensorFlow concrete function → TFLite flatbuffers.

TensorFlow is imported inside these functions only (it is the ``export`` extra). The graph is
plain ``tf.nn`` ops on constants (no Keras), so the converter sees exactly the ops we chose:
CONV_2D (+PAD where darknet pads asymmetrically), MAX_POOL_2D, LEAKY_RELU, CONCATENATION,
SPLIT, RESIZE_NEAREST_NEIGHBOR, ADD. The outputs are the raw head tensors, NHWC, in cfg order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from edged._native import quiet_native_output
from edged.errors import DarknetError, ExportError, first_line
from edged.export.darknet import (
    Conv,
    ConvParams,
    DarknetNet,
    MaxPool,
    Region,
    Route,
    Shortcut,
    Upsample,
    Yolo,
)

logger = logging.getLogger(__name__)


def _tf() -> Any:
    try:
        with quiet_native_output():
            import tensorflow as tf
    except ImportError as e:
        raise ExportError(
            "edged export needs TensorFlow: pip install 'edged[export]' "
            "(tensorflow-cpu and ethos-u-vela)"
        ) from e
    return tf


def _tf_same_pads(size: int, stride: int, n: int) -> tuple[int, int]:
    out = -(-n // stride)
    total = max((out - 1) * stride + size - n, 0)
    return total // 2, total - total // 2


def _padding_mode(layer: Conv | MaxPool) -> str | None:
    """'SAME'/'VALID' when TF's own padding equals darknet's, else None (explicit PAD needed)."""
    h, w = layer.in_shape[:2]
    top, bottom, left, right = layer.pad
    if layer.pad == (0, 0, 0, 0):
        return "VALID"
    same_h = _tf_same_pads(layer.size, layer.stride, h)
    same_w = _tf_same_pads(layer.size, layer.stride, w)
    if (top, bottom) == same_h and (left, right) == same_w:
        return "SAME"
    return None


def build_forward(net: DarknetNet, params: dict[int, ConvParams],
                  clamp_logits: float | None = None) -> Any:
    """A ``tf.function`` mapping (1, H, W, C) float32 RGB in [0, 1] to the raw head tensors.

    ``clamp_logits`` clips the head outputs to [-c, c] (int8 export: see HEAD_CLAMP).
    """
    tf = _tf()
    consts = {
        i: (tf.constant(p.kernel), tf.constant(p.bias)) for i, p in params.items()
    }

    def activation(x: Any, act: str) -> Any:
        if act == "leaky":
            return tf.nn.leaky_relu(x, alpha=0.1)
        if act == "relu":
            return tf.nn.relu(x)
        if act == "logistic":
            return tf.math.sigmoid(x)
        return x

    def forward(x: Any) -> tuple[Any, ...]:
        outs: list[Any] = []
        heads: list[Any] = []
        for layer in net.layers:
            prev = outs[-1] if outs else x
            if isinstance(layer, Conv):
                kernel, bias = consts[layer.index]
                mode = _padding_mode(layer)
                if mode is None:
                    t, b, le, r = layer.pad
                    prev = tf.pad(prev, [[0, 0], [t, b], [le, r], [0, 0]])
                    mode = "VALID"
                y = tf.nn.conv2d(prev, kernel, strides=layer.stride, padding=mode)
                y = activation(tf.nn.bias_add(y, bias), layer.activation)
            elif isinstance(layer, MaxPool):
                mode = _padding_mode(layer)
                if mode is None:
                    raise DarknetError(
                        f"{layer.where(net.source)}: maxpool size={layer.size} "
                        f"stride={layer.stride} on {layer.in_shape[:2]} pads unlike TensorFlow; "
                        "not supported"
                    )
                y = tf.nn.max_pool2d(prev, layer.size, layer.stride, mode)
            elif isinstance(layer, Route):
                parts = []
                for s in layer.sources:
                    t_in = outs[s]
                    if layer.groups > 1:
                        t_in = tf.split(t_in, layer.groups, axis=3)[layer.group_id]
                    parts.append(t_in)
                y = parts[0] if len(parts) == 1 else tf.concat(parts, axis=3)
            elif isinstance(layer, Upsample):
                h, w = layer.out_shape[:2]
                y = tf.raw_ops.ResizeNearestNeighbor(
                    images=prev, size=[h, w], align_corners=False, half_pixel_centers=False)
            elif isinstance(layer, Shortcut):
                y = activation(prev + outs[layer.source], layer.activation)
            elif isinstance(layer, Yolo | Region):
                h = outs[layer.in_layer]
                if clamp_logits is not None:
                    h = tf.clip_by_value(h, -clamp_logits, clamp_logits)
                heads.append(h)
                y = prev  # nothing may route from a head (checked by the parser)
            else:  # pragma: no cover - the parser only produces the kinds above
                raise DarknetError(f"{layer.where(net.source)}: cannot build this layer")
            outs.append(y)
        return tuple(heads)

    spec = tf.TensorSpec([1, net.height, net.width, net.channels], tf.float32, name="images")
    return tf.function(forward, input_signature=[spec], autograph=False)


def convert(forward: Any, quantize: bool = False, per_tensor: bool = False,
            representative: Callable[[], Iterable[list[np.ndarray]]] | None = None,
            input_type: str = "uint8") -> bytes:
    """Convert to a TFLite flatbuffer: float32, or full-int8 (``input_type`` in, int8 out)."""
    tf = _tf()
    concrete = forward.get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], forward)
    if quantize:
        if representative is None:
            raise ExportError("full-integer quantization needs a representative dataset")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = {"uint8": tf.uint8, "int8": tf.int8}[input_type]
        converter.inference_output_type = tf.int8
        if per_tensor:
            converter._experimental_disable_per_channel = True
    with quiet_native_output() as captured:
        try:
            return bytes(converter.convert())
        except Exception as e:  # the converter raises bare Exception/ConverterError
            logger.debug("converter output:\n%s", captured())
            raise ExportError(f"TFLite conversion failed: {first_line(e)}") from e
