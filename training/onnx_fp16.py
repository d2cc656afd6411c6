"""Post-processing of exported ONNX graphs: fp16 weight storage and external data.

fp16 variant (`to_fp16_weights`): each selected float32 initializer is stored as float16 and a
`Cast(to=FLOAT)` node, placed first in the graph, turns it back into the original float32 name,
so every op still computes in float32 and all graph inputs/outputs stay float32 (the bundle
contract). Why not real fp16 compute: onnxruntime's CPU execution provider has few and slow
float16 kernels (many ops would fall back or fail), while storing weights as fp16 halves the
files to download and ship; ORT folds the Casts into fp32 weights when it loads the session.

Only the model's *parameters* are converted, selected by name (the exporter keeps parameter
names by exporting without constant folding). Computed constants (RoPE frequencies, the
adaptive-pool matrix, mask fill values like finfo(float32).min, which is -inf in fp16) stay
float32: rounding them would change the model beyond weight rounding.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# protobuf refuses to serialise a message over 2 GiB; stay well below it.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
FP16_MAX = 65504.0


def initializer_bytes(model: onnx.ModelProto) -> int:
    total = 0
    for t in model.graph.initializer:
        n = int(np.prod(t.dims)) if len(t.dims) else 1
        total += n * np.dtype(onnx.mapping.TENSOR_TYPE_TO_NP_TYPE[t.data_type]).itemsize
    return total


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def to_fp16_weights(model: onnx.ModelProto, select: Callable[[str], bool]) -> onnx.ModelProto:
    """Returns a copy whose selected float32 initializers are stored as float16 + Cast."""
    out = _copy(model)
    g = out.graph
    casts = []
    kept = []
    for init in g.initializer:
        if init.data_type != TensorProto.FLOAT or not select(init.name):
            kept.append(init)
            continue
        arr = numpy_helper.to_array(init)
        if arr.size and np.abs(arr).max() > FP16_MAX:  # would overflow: keep fp32
            kept.append(init)
            continue
        stored = init.name + "__fp16"
        kept.append(numpy_helper.from_array(arr.astype(np.float16), stored))
        casts.append(helper.make_node("Cast", [stored], [init.name], to=TensorProto.FLOAT,
                                      name=init.name + "__cast"))
    del g.initializer[:]
    g.initializer.extend(kept)
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(casts + nodes)
    # Initializers that are also listed as graph inputs (old IR) would now be dangling.
    names = {c.output[0] for c in casts}
    inputs = [i for i in g.input if i.name not in names]
    del g.input[:]
    g.input.extend(inputs)
    return out


def save_model(model: onnx.ModelProto, path: Path, *, external_threshold: int = EXTERNAL_DATA_THRESHOLD) -> bool:
    """Saves `model` to `path`; when its weights exceed `external_threshold` bytes they go to
    one `<file>_data` file next to it (the contract's `onnx/*.onnx_data`). Returns whether."""
    path = Path(path)
    data_name = path.name + "_data"
    data_path = path.with_name(data_name)
    if data_path.exists():
        data_path.unlink()
    external = initializer_bytes(model) > external_threshold
    if external:
        model = _copy(model)  # saving as external data strips the tensors of the proto it is given
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=1024, convert_attribute=False)
    else:
        onnx.save_model(model, str(path))
    return external


def topological_sort(model: onnx.ModelProto) -> onnx.ModelProto:
    """Reorders nodes so each comes after the producers of its inputs (in place; returns it).

    torch 1.13's tracer can emit a node after its first consumer when a no-op `.float()` /
    `.to(dtype)` returns its own input (LlamaRMSNorm on float32), which onnxruntime rejects
    ("... is not a graph input, initializer, or output of a previous node"). Stable: nodes
    already in order keep their order.
    """
    g = model.graph
    available = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    pending = list(g.node)
    ordered = []
    while pending:
        progressed = False
        rest = []
        for node in pending:
            needs = [x for x in node.input if x not in available]
            # subgraph-free graphs only (the exporter emits no If/Loop)
            if not needs:
                ordered.append(node)
                available.update(node.output)
                progressed = True
            else:
                rest.append(node)
        if not progressed:
            missing = sorted({x for n in rest for x in n.input if x not in available})[:5]
            raise ValueError(f"graph has a cycle or undefined inputs: {missing}")
        pending = rest
    del g.node[:]
    g.node.extend(ordered)
    return model


def remove_noop_casts(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drops `Cast(to=T)` nodes whose input already has type T (in place; returns it).

    LlamaRMSNorm's `x.float()` / `.to(x.dtype)` trace to such Casts, chained; onnxruntime 1.30's
    Cast-elimination pass mis-wires a chain of them ("Node input '.../Cast_1_output_0' is not a
    graph input, initializer, or output of a previous node") at any optimisation level above
    'disabled'. A Cast feeding a graph output becomes an Identity.
    """
    g = model.graph
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {}
    for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    for t in g.initializer:
        types[t.name] = t.data_type
    graph_outputs = {o.name for o in g.output}
    rename = {}
    kept = []
    for node in g.node:
        for i, x in enumerate(node.input):
            if x in rename:
                node.input[i] = rename[x]
        if node.op_type == "Cast" and node.output[0] not in graph_outputs:
            to = next(a.i for a in node.attribute if a.name == "to")
            if types.get(node.input[0]) == to:
                rename[node.output[0]] = node.input[0]
                continue
        kept.append(node)
    del g.node[:]
    g.node.extend(kept)
    return model
