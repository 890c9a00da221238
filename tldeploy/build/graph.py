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
