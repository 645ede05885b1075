# `make gpu` (python bench.py gpu) is run on a GPU machine lent for minutes at a time: it must not rot in between.
# Its CPU mode walks every section's code on tiny shapes under Triton's interpreter; here it must finish every
# section, with every kernel within 2x of the reference path's error, and leave both report files.
import json
import os
import subprocess
import sys

from conftest import ROOT


def test_the_gpu_report_runs_every_section_on_the_cpu(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    p = subprocess.run([sys.executable, "bench.py", "gpu", "--cpu", f"--out={tmp_path}"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    report = json.load(open(tmp_path / "gpu_report.json"))
    assert list(report) == ["environment", "correctness", "kernel speed", "training", "decoding", "GPU tests"]
    assert all(s["status"] == "done" for s in report.values()), {k: s["status"] for k, s in report.items()}
    rows = [r for t in report["correctness"]["tables"].values() for r in t["rows"]]
    assert len(rows) == 2 * 8 + 2 * 6 and all(r["ok"] for r in rows), [r for r in rows if not r["ok"]]
    assert {"decode", "fwd+bwd"} == {r["path"] for r in rows if "path" in r}
    speed = report["kernel speed"]["tables"]
    assert len(speed) == 4 and all(t["rows"] for t in speed.values())
    train = next(iter(report["training"]["tables"].values()))["rows"]
    assert [(r["backend"], r["compile"]) for r in train] == [("triton", False), ("sdpa", False)]
    assert "within bf16 noise" in " ".join(report["training"]["notes"])
    assert "outputs identical" in " ".join(report["decoding"]["notes"])
    assert "skipped" in " ".join(report["GPU tests"]["notes"])
    md = (tmp_path / "gpu_report.md").read_text()
    assert md.count("\n## ") == 6 and "| triton err | sdpa err |" in md
    # every budget spent at once: each section stops at its first check and says so, and the report is whole
    p = subprocess.run([sys.executable, "bench.py", "gpu", "--cpu", f"--out={tmp_path / 'none'}", "--scale=0"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    report = json.load(open(tmp_path / "none" / "gpu_report.json"))
    assert p.returncode == 0 and all(s["status"] == "done" for s in report.values())
    assert "budget spent" in " ".join(report["correctness"]["notes"] + report["training"]["notes"])
    # without the interpreter, or a GPU, one line says what to do
    p = subprocess.run([sys.executable, "bench.py", "gpu", "--cpu"], cwd=ROOT, capture_output=True, text=True,
                       env={k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"})
    assert p.returncode == 2 and p.stderr.strip() == ("error: bench.py gpu --cpu runs the Triton kernels in their "
                                                      "interpreter: TRITON_INTERPRET=1 python bench.py gpu --cpu")
