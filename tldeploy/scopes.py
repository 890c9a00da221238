"""Which PyTorch module each ONNX node came from.

The dynamo exporter leaves `pkg.torch.onnx.name_scopes` on every node, e.g.
`['', 'model.backbone', ..., 'model.backbone.features.model.blocks.1.0.bn1', '_native_batch_norm...']`:
the module path from the exported wrapper down, then the op. Reports name a layer by that path
relative to the adapted model (`backbone.features.model.blocks.1.0.conv_pw`), which
`model.get_submodule(path)` accepts. Simplification (onnxslim) drops node metadata and ONNX
Runtime's quantizer keeps it; `keep_name_scopes` copies it back by node name.

The scope list is read as quoted strings with a regular expression: metadata is never evaluated.
"""

from __future__ import annotations

import re

SCOPES_KEY = "pkg.torch.onnx.name_scopes"
# The exported wrapper holds the adapted model as `model` (see onnx_export._CamGraph).
_ROOT = "model."
_QUOTED = re.compile(r"'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\"")


def _scopes(node) -> list[str]:
    for p in node.metadata_props:
        if p.key == SCOPES_KEY:
            return [a or b for a, b in _QUOTED.findall(p.value)]
    return []


def module_path(node, initializers: set[str] | frozenset[str] = frozenset()) -> str:
    """The module `node` belongs to, relative to the adapted model ("" when none is recorded).

    A convolution or linear layer's weight named like a parameter of a sibling module wins over
    the scope: a convolution with a folded BatchNorm carries the BatchNorm's scope, but its weight
    is still `model.<conv path>.weight`. Elsewhere the scope wins: the exporter keeps one copy of
    identical initializers (untrained LayerNorms' all-ones weights), whose name is the first's."""
    modules = [s for s in _scopes(node)[:-1] if s.startswith(_ROOT)]  # the last entry is the op
    scope = modules[-1][len(_ROOT) :] if modules else ""
    if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
        for name in node.input[1:]:
            if name in initializers and name.startswith(_ROOT) and name.endswith(".weight"):
                path = name[len(_ROOT) : -len(".weight")]
                if not scope or path.rpartition(".")[0] == scope.rpartition(".")[0]:
                    return path
    return scope


def module_paths(model) -> dict[str, str]:
    """{node name: module path} for every node of `model`."""
    inits = {i.name for i in model.graph.initializer}
    return {n.name: module_path(n, inits) for n in model.graph.node}


def op_instances(model) -> dict[str, str]:
    """{node name: the PyTorch op call it came from} for the nodes that record one: the nodes one
    op decomposed into (GELU into Div, Erf, Add, Mul, Mul) share it."""
    out = {}
    for n in model.graph.node:
        scopes = _scopes(n)
        if scopes:
            out[n.name] = ".".join(scopes)
    return out


def short_names(paths: list[str]) -> dict[str, str]:
    """Paths without the dotted prefix that every backbone path shares (`backbone.features.model.`
    for a timm backbone), so a report can say `blocks.1.0.conv_pw`; other paths stay whole."""
    inside = [p.split(".") for p in paths if p.startswith("backbone.")]
    common: list[str] = []
    while len(inside) > 1:
        common = []
        for parts in zip(*inside):
            if len(set(parts)) != 1:
                break
            common.append(parts[0])
        # a node of the wrapper itself (a ViT's position-embedding Add, scoped `backbone.features`)
        # would cut the prefix short of `model.`: such paths stay whole, the rest are shortened
        deeper = [parts for parts in inside if len(parts) > len(common)]
        if len(deeper) == len(inside):
            break
        inside = deeper
    cut = len(common)
    while cut and any(len(parts) > cut and parts[cut].isdigit() for parts in inside):
        cut -= 1  # `stages.2.0`, not `2.0`: a bare index names nothing
    return {p: (".".join(p.split(".")[cut:]) or p) if p.startswith("backbone.") and cut else p for p in paths}


def keep_name_scopes(source, target) -> None:
    """Copy the name scopes of `source`'s nodes onto `target`'s nodes of the same name, where
    `target` (a simplified or rewritten copy) lost them; a node that a rewrite renamed takes the
    scope of the source node that wrote its output (ONNX Runtime's optimiser splits a HardSwish
    into unnamed nodes, the last of which keeps its output)."""
    scoped = [(n, p.value) for n in source.graph.node for p in n.metadata_props if p.key == SCOPES_KEY]
    by_name = {n.name: v for n, v in scoped if n.name}
    by_output = {o: v for n, v in scoped for o in n.output}
    for n in target.graph.node:
        scope = by_name.get(n.name) or next((by_output[o] for o in n.output if o in by_output), None)
        if scope is not None and not any(p.key == SCOPES_KEY for p in n.metadata_props):
            entry = n.metadata_props.add()
            entry.key, entry.value = SCOPES_KEY, scope


# Node metadata that says nothing about the build machine. The exporter also writes
# `pkg.torch.onnx.stack_trace` (source lines with the checkout's absolute paths, ~90 KB on the
# digits model) and other debugging keys; an artifact carries none of them.
PORTABLE_NODE_KEYS = frozenset({SCOPES_KEY, "pkg.torch.onnx.class_hierarchy"})


def save_portable(source, target, model=None):
    """Write `source` (an ONNX path or ModelProto) to `target` without build-machine metadata; a
    file that has none is copied byte for byte. `model`: the file's graph already parsed, as a
    copy this may change (the file is then not read again). Returns the ModelProto written."""
    from pathlib import Path

    import onnx

    is_file = isinstance(source, (str, Path))
    if model is None:
        model = onnx.load(str(source)) if is_file else source
    if strip_build_machine(model) or not is_file:
        onnx.save(model, str(target))
    else:
        Path(target).write_bytes(Path(source).read_bytes())
    return model


def strip_build_machine(model) -> int:
    """Drop node metadata and doc strings that describe where the model was made (absolute paths,
    stack traces), keeping the name scopes diagnosis reads. Returns the entries removed."""
    removed = 0
    graphs = [model.graph]
    while graphs:
        g = graphs.pop()
        for n in g.node:
            keep = [(p.key, p.value) for p in n.metadata_props if p.key in PORTABLE_NODE_KEYS]
            removed += len(n.metadata_props) - len(keep) + bool(n.doc_string)
            del n.metadata_props[:]
            for k, v in keep:
                entry = n.metadata_props.add()
                entry.key, entry.value = k, v
            n.doc_string = ""
            for a in n.attribute:
                graphs.extend([a.g] if a.HasField("g") else [])
                graphs.extend(a.graphs)
        removed += bool(g.doc_string)
        g.doc_string = ""
    return removed

