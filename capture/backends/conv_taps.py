"""A graph rewrite for ONNX Runtime's CPU provider: single-output convolutions as taps.

ONNX Runtime's CPU provider runs convolutions in a channel-blocked layout (NCHWc, 8 or 16 channels a block)
and pads the output channels up to a block. A convolution with ONE output channel then does 16x its work:
D_detail's last layer (16 -> 1 channels, 3x3, 256x256) costs 2.9 ms of its 21 on one core. The same sum,
written as one 1x1 convolution to the k*k taps (k*k output channels, nearly no padding) and the shifted sum
of those taps, costs ~1 ms:

    conv(x, w)[y, x] = b + sum_(dy, dx) (w[:, dy, dx] . x)[y + dy - p, x + dx - p]

Only the order of the additions changes (float32 rounding, ~1e-7 relative). Applied to the graph in memory
when a CPU session is made (`split_single_output_convs`); the ONNX file on disk, its sidecar and every other
backend are untouched.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

MIN_OPSET = 10  # Slice with its starts, ends and axes as inputs
# The networks whose graphs hold such a convolution (D_detail's last layer). E_flame has none, and parsing its
# 90 MB graph only to find that would add 0.25 s to every session's start.
NETWORKS = ("D_detail",)


def _attributes(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _same_size_conv(node, initializers: dict) -> Optional[tuple[np.ndarray, int]]:
    """(weight [1, C, k, k], k) when `node` is a one-output-channel, stride-1, 'same'-padded, odd-k conv."""
    from onnx import numpy_helper

    if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or node.input[1] not in initializers:
        return None
    dims = list(initializers[node.input[1]].dims)  # read the shape before converting any weights
    if len(dims) != 4 or dims[0] != 1 or dims[2] != dims[3] or dims[2] % 2 == 0 or dims[2] == 1:
        return None
    k = int(dims[2])
    a = _attributes(node)
    p = k // 2
    if (a.get("group", 1) != 1 or list(a.get("strides", [1, 1])) != [1, 1]
            or list(a.get("dilations", [1, 1])) != [1, 1] or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")
            or list(a.get("pads", [0, 0, 0, 0])) != [p, p, p, p]
            or list(a.get("kernel_shape", [k, k])) != [k, k]):
        return None
    return numpy_helper.to_array(initializers[node.input[1]]), k


def _tap_nodes(node, w: np.ndarray, k: int, bias: Optional[str]) -> tuple[list, list]:
    """Nodes and initialisers that compute `node` (see the module docstring) into its own output name."""
    from onnx import helper, numpy_helper

    name = node.name or node.output[0]
    p = k // 2
    taps = np.ascontiguousarray(w[0].transpose(1, 2, 0).reshape(k * k, w.shape[1])[:, :, None, None])
    t_w, t_pad, axes = f"{name}/taps_w", f"{name}/taps", f"{name}/axes"
    inits = [numpy_helper.from_array(taps.astype(w.dtype), t_w),
             numpy_helper.from_array(np.array([1, 2, 3], np.int64), axes)]
    # a padded 1x1 convolution without bias: the taps with a border of p zeros, no Pad of its own
    nodes = [helper.make_node("Conv", [node.input[0], t_w], [t_pad], name=f"{name}/taps_conv", kernel_shape=[1, 1],
                              pads=[p, p, p, p])]
    total = None
    end_max = np.iinfo(np.int64).max
    for t in range(k * k):
        dy, dx = divmod(t, k)
        # the padded taps are (H + 2p) x (W + 2p); this shift's window starts at (dy, dx) and is H x W
        ends = [t + 1, dy - 2 * p if dy < 2 * p else end_max, dx - 2 * p if dx < 2 * p else end_max]
        starts_name, ends_name, shifted = f"{name}/starts{t}", f"{name}/ends{t}", f"{name}/shift{t}"
        inits += [numpy_helper.from_array(np.array([t, dy, dx], np.int64), starts_name),
                  numpy_helper.from_array(np.array(ends, np.int64), ends_name)]
        nodes.append(helper.make_node("Slice", [t_pad, starts_name, ends_name, axes], [shifted],
                                      name=f"{name}/slice{t}"))
        if total is None:
            total = shifted
            continue
        last = t == k * k - 1 and bias is None
        out = node.output[0] if last else f"{name}/sum{t}"
        nodes.append(helper.make_node("Add", [total, shifted], [out], name=f"{name}/add{t}"))
        total = out
    if bias is not None:
        nodes.append(helper.make_node("Add", [total, bias], [node.output[0]], name=f"{name}/bias"))
    return nodes, inits


def split_single_output_convs(model) -> int:
    """Rewrite, in place, every one-output-channel 'same' convolution of an onnx.ModelProto as taps.
    Returns how many were rewritten (0 leaves the model untouched)."""
    from onnx import numpy_helper

    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < MIN_OPSET:
        return 0
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    new_nodes, new_inits, count = [], [], 0
    for node in graph.node:
        found = _same_size_conv(node, initializers)
        if found is None:
            new_nodes.append(node)
            continue
        w, k = found
        bias = None
        if len(node.input) > 2 and node.input[2]:
            if node.input[2] not in initializers:
                new_nodes.append(node)
                continue
            b = numpy_helper.to_array(initializers[node.input[2]])
            bias = f"{node.name or node.output[0]}/bias4d"
            new_inits.append(numpy_helper.from_array(b.reshape(1, 1, 1, 1).astype(b.dtype), bias))
        nodes, inits = _tap_nodes(node, w, k, bias)
        new_nodes += nodes
        new_inits += inits
        count += 1
    if count:
        del graph.node[:]
        graph.node.extend(new_nodes)
        graph.initializer.extend(new_inits)
    return count


def cpu_graph(path) -> Optional[bytes]:
    """The serialised graph at `path` with `split_single_output_convs` applied, or None when there is nothing
    to rewrite (the caller then loads the file itself)."""
    import onnx

    model = onnx.load(str(path))
    if not split_single_output_convs(model):
        return None
    return model.SerializeToString()
