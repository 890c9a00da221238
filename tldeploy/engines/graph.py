"""Graph questions the FP16 and INT8 builders ask of an exported tldeploy ONNX model."""

from __future__ import annotations


def frontend_nodes(model, contract) -> set[str]:
    """The graph's front end (an audio graph's log-mel): the nodes of the op that ends it, as the
    contract's modality names it (`frontend_end_op`, Log), and every node before them; none where
    there is no front end (images). FP16 and INT8 leave these in float32."""
    end = contract.preprocessing.frontend_end_op
    if end is None:
        return set()
    last = [n for n in model.graph.node if n.op_type == end]
    return {n.name for n in last} | ancestors(model, *(o for n in last for o in n.input))


def ancestors(model, *tensors: str) -> set[str]:
    """Names of the nodes whose outputs `tensors` depend on."""
    producers = {o: n for n in model.graph.node for o in n.output}
    seen: set[str] = set()
    stack = list(tensors)
    while stack:
        n = producers.get(stack.pop())
        if n is not None and n.name not in seen:
            seen.add(n.name)
            stack.extend(n.input)
    return seen


def sort_topologically(graph) -> None:
    """Reorder `graph.node` so that every node follows the producers of its inputs, keeping the
    present order where it is already valid (ONNX requires the order; ONNX Runtime's FP16 converter
    appends the casts it inserts at the end)."""
    producer = {o: k for k, n in enumerate(graph.node) for o in n.output}
    placed: set[int] = set()
    opened: set[int] = set()  # inputs being placed: met again before it is placed, it is its own ancestor
    order: list[int] = []
    for start in range(len(graph.node)):
        stack = [(start, False)]
        while stack:
            k, inputs_done = stack.pop()
            if k in placed:
                continue
            if inputs_done:
                placed.add(k)
                order.append(k)
                continue
            if k in opened:
                raise ValueError(f"ONNX graph has a cycle through node {graph.node[k].name or graph.node[k].op_type}")
            opened.add(k)
            stack.append((k, True))
            stack.extend((producer[i], False) for i in reversed(graph.node[k].input) if i in producer and producer[i] not in placed)
    nodes = [graph.node[k] for k in order]
    copies = [type(n)() for n in nodes]
    for c, n in zip(copies, nodes, strict=True):
        c.CopyFrom(n)
    del graph.node[:]
    graph.node.extend(copies)


def name_every_node(model) -> int:
    """Give each unnamed or repeated node a name of its own (`<op>_<position>`); returns how many.
    ONNX allows either, but ONNX Runtime's quantizer and the INT8 mixes match nodes by name, and
    its optimiser writes the HardSigmoid and Mul it splits a HardSwish into without names (a timm
    MobileNetV3: 36 unnamed nodes, and a mix that read a later tensor: a cyclic graph)."""
    seen: set[str] = set()
    renamed = 0
    for k, n in enumerate(model.graph.node):
        if not n.name or n.name in seen:
            base, i = f"{n.op_type}_{k}", 0
            while (name := base if i == 0 else f"{base}_{i}") in seen:
                i += 1
            n.name, renamed = name, renamed + 1
        seen.add(n.name)
    return renamed


def check_written_graph(model, what: str) -> None:
    """onnx.checker and a topological-order check on a graph tldeploy rewrote, before it is
    written: a failure is a bug in the rewrite (RuntimeError, with its traceback)."""
    import onnx

    known = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer} | {""}
    for n in model.graph.node:
        missing = [t for t in n.input if t not in known]
        if missing:
            raise RuntimeError(f"tldeploy wrote a {what} graph whose node {n.name} ({n.op_type}) reads {missing[0]} before it is "
                               "computed (out of order or cyclic; a bug: please report it)")
        known.update(n.output)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise RuntimeError(f"tldeploy wrote an invalid {what} graph (a bug; please report it): {str(e)[:300]}") from e
