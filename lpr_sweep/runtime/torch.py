"""PyTorch eager, or the compiled int8 module of quant=torch_x86; deploys as an exported program (.pt2),
which loads back (``torch.export.load``) without this package's model code.

Denormal float32 weights are zeroed first, as the ONNX export does (export.py): the upstream LPRNet
holds 152,384 values near 1e-41, and on the Intel CI machine they made eager PyTorch 4.5x slower.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
from torch import nn

from lpr_sweep import hardware as hw
from lpr_sweep.model import INPUT_HW
from lpr_sweep.model_file import ModelFile
from lpr_sweep.runtime import register


def module_tensors(module: nn.Module) -> Iterator[np.ndarray]:
    """State dict, plus the constants an exported/quantized GraphModule keeps as plain attributes."""
    import torch

    module = getattr(module, "_orig_mod", module)  # torch.compile wraps the module it compiles
    seen = {id(t): t for t in module.state_dict().values()}
    for node in getattr(getattr(module, "graph", None), "nodes", ()):
        if node.op == "get_attr":
            value = module
            for part in node.target.split("."):
                value = getattr(value, part)
            if isinstance(value, torch.Tensor):
                seen.setdefault(id(value), value)
    for t in seen.values():
        yield (t.float() if t.dtype == torch.bfloat16 else t).detach().cpu().numpy()


def flush_denormals(module: nn.Module) -> int:
    """Zero, in place, every float32 parameter and buffer value below float32's smallest normal; how many."""
    import torch

    count, tiny = 0, torch.finfo(torch.float32).tiny
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.dtype == torch.float32:
                denormal = (tensor.abs() < tiny) & (tensor != 0)
                count += int(denormal.sum())
                tensor[denormal] = 0.0
    return count


@register("torch")
class TorchRuntime:
    packages = ("torch", "torchao")
    devices = ("cpu", "cuda")

    def __init__(self, model_file: ModelFile, hardware: hw.HardwareConfig, workdir: Path):
        import torch

        hw.check(hardware)
        torch.set_num_threads(hw.threads(hardware))
        self._torch = torch
        self.device = torch.device(hardware.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = hardware.allow_tf32
        if model_file.module is not None:
            flush_denormals(model_file.module)
        artifact = model_file.artifact
        if artifact is None:
            artifact = workdir / "model.pt2"
            example = torch.zeros(2, 3, *INPUT_HW)
            program = torch.export.export(model_file.module.eval(), (example,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
            torch.export.save(program, str(artifact))
        module = model_file.module if model_file.module is not None else torch.export.load(str(artifact)).module()
        self.model = module.to(self.device)
        self.artifacts = [artifact]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            return self.model(self._torch.from_numpy(batch).to(self.device)).cpu().numpy()

    def constants(self) -> Iterator[np.ndarray]:
        return module_tensors(self.model)
