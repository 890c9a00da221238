"""Graph questions the FP16 and INT8 builders ask of an exported tldeploy ONNX model."""

from __future__ import annotations


def frontend_nodes(model, contract) -> set[str]:
    """An audio graph's log-mel front end: the Log node and every node before it (none for images).
    FP16 and INT8 leave these in float32."""
    if contract.preprocessing.modality != "audio":
        return set()
    logs = [n for n in model.graph.node if n.op_type == "Log"]
    return {n.name for n in logs} | ancestors(model, *(o for n in logs for o in n.input))


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
