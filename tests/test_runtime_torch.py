"""runtime=torch: deploys a state dict, and on a GPU matches the CPU."""
import numpy as np
import pytest
import torch

from conftest import build_runtime as _build


def test_torch_deploys_a_program_that_loads_back_alone(net_and_onnx):
    from lpr_sweep import runtime
    from lpr_sweep.hardware import HardwareConfig
    from lpr_sweep.model_file import ModelFile

    net, onnx_path, workdir = net_and_onnx
    (pt2,) = _build("torch", net, onnx_path, workdir).artifacts
    again = runtime.build("torch", ModelFile(None, pt2, artifact=pt2), HardwareConfig(threads=1), workdir)
    x = np.random.default_rng(2).standard_normal((3, 3, 24, 94)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(again(x), net(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-4)


def test_denormal_weights_are_zeroed_and_nothing_else_changes(tmp_path):
    from lpr_sweep import runtime
    from lpr_sweep.hardware import HardwareConfig
    from lpr_sweep.model_file import ModelFile

    class Net(torch.nn.Sequential):
        def forward(self, x):  # named as the runtime's export names LPRNet's input
            return super().forward(x)

    torch.manual_seed(0)
    net = Net(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).eval()
    with torch.no_grad():
        net[0].weight[0, 0, 0, :2] = torch.tensor([1e-41, -3e-40])  # denormal float32
        net[1].running_var[1] = 2e-39
    x = np.random.default_rng(0).standard_normal((2, 3, 24, 94)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rt = runtime.build("torch", ModelFile(net, tmp_path / "unused.onnx"), HardwareConfig(threads=1), tmp_path)
    after = net.state_dict()
    assert after["0.weight"][0, 0, 0, :2].tolist() == [0.0, 0.0] and after["1.running_var"][1] == 0.0
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"0.weight", "1.running_var"}
    assert (before["0.weight"] != after["0.weight"]).sum() == 2
    np.testing.assert_allclose(rt(x), want, rtol=1e-6, atol=1e-6)  # below float32's precision, as the export's flush


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; CI has none")
def test_torch_on_cuda_matches_cpu(net_and_onnx):
    net, onnx_path, workdir = net_and_onnx
    x = np.random.default_rng(1).standard_normal((2, 3, 24, 94)).astype(np.float32)
    with torch.no_grad():
        want = net.cpu()(torch.from_numpy(x)).numpy()
    got = _build("torch", net, onnx_path, workdir, device="cuda")(x)
    net.cpu()
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
