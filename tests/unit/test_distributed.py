import json
import os
import subprocess
import sys


def test_torchrun_two_cpu_processes_on_gloo(blob_data, tmp_path):
    run = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "tldeploy", "train", str(blob_data), "-o", str(run), "--backbone", "tiny_cnn",
        "--mode", "finetune", "--epochs", "3", "--warmup-epochs", "1", "--no-augment", "--batch-size", "8",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "distributed over 2 processes" in proc.stderr
    assert sorted(p.name for p in run.iterdir()) == ["metrics.json", "model.pt", "plots"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["history"]) == 3 and metrics["n"] == 16
