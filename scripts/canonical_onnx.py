"""Renames an ONNX graph's nodes and internal tensors by their position, for reproducible bytes.

    python scripts/canonical_onnx.py IN.onnx OUT.onnx

tf2onnx names nodes and constants from counters that run in set order, so two conversions of
the same TFLite file give the same graph under different names (and a different sha256). This
renames every node ``n<i>`` and every tensor that is not a graph input or output ``t<j>`` in
order of first use, symbolic dimensions ``d<k>``, clears empty-but-set fields and the graph doc string (tf2onnx writes the input path there), and sorts the initializers by their new name. The computation is
unchanged; the result's sha256 is what models/manifest.toml pins. Needs the ``onnx`` package.
"""

import sys

import onnx


def canonicalise(model: onnx.ModelProto) -> onnx.ModelProto:
    g = model.graph
    g.ClearField("doc_string")       # tf2onnx writes the input path there
    dims: dict[str, str] = {}
    for value in [*g.input, *g.output]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_param = dims.setdefault(dim.dim_param, f"d{len(dims)}")
    keep = {v.name for v in g.input} | {v.name for v in g.output} | {""}
    names: dict[str, str] = {}

    def rename(name: str) -> str:
        if name in keep:
            return name
        if name not in names:
            names[name] = f"t{len(names)}"
        return names[name]

    for i, node in enumerate(g.node):
        for k, name in enumerate(node.input):
            node.input[k] = rename(name)
        for k, name in enumerate(node.output):
            node.output[k] = rename(name)
        node.name = f"n{i}"
        # proto2 keeps whether an empty field was set: tf2onnx sets domain "" on some nodes in
        # some runs and not in others, which changes the bytes but not the meaning.
        for empty in ("domain", "doc_string"):
            if not getattr(node, empty):
                node.ClearField(empty)
    inits = sorted(g.initializer, key=lambda t: int(rename(t.name)[1:]) if rename(t.name)[0] == "t" else -1)
    for t in inits:
        t.name = rename(t.name)
    del g.initializer[:]
    g.initializer.extend(inits)
    for vi in g.value_info:
        vi.name = rename(vi.name)
    vis = sorted(g.value_info, key=lambda v: v.name)
    del g.value_info[:]
    g.value_info.extend(vis)
    return model


if __name__ == "__main__":
    src, dst = sys.argv[1:3]
    onnx.save(canonicalise(onnx.load(src)), dst)
