"""quant=torch_x86: the PT2E flow as a user runs it."""
import numpy as np
import pytest
import torch



@pytest.mark.slow
def test_torch_x86_prints_no_deprecation_warning(pruned_onnx, tmp_path):
    """Run the PT2E path in a fresh interpreter with Python's default warning filters, as a user would."""
    import subprocess
    import sys

    fp32, calib, _ = pruned_onnx
    np.save(tmp_path / "calib.npy", calib)
    torch.save(fp32.module.state_dict(), tmp_path / "w.pt")
    code = (
        "import numpy as np, torch, pathlib; from lpr_sweep import quant; from lpr_sweep.model import LPRNet\n"
        "from lpr_sweep.model_file import ModelFile\n"
        f"net = LPRNet().eval(); net.load_state_dict(torch.load({str(tmp_path / 'w.pt')!r}, weights_only=True))\n"
        f"out = quant.backend_of(quant.QuantConfig(backend='torch_x86')).quantize(ModelFile(net, pathlib.Path('x.onnx')), np.load({str(tmp_path / 'calib.npy')!r}),"
        f" 'histogram', [], quant.QuantConfig(backend='torch_x86', compile=False), pathlib.Path({str(tmp_path)!r}))\n"
        "print(out.artifact)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "deprecat" not in (done.stdout + done.stderr).lower()
    assert done.stdout.strip().endswith("model_int8.pt2")
