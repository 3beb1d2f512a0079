"""torchao's PT2E flow: ``torch.export`` -> ``prepare_pt2e`` with ``X86InductorQuantizer`` ->
calibrate -> ``convert_pt2e`` -> ``torch.compile``; runs on torch. It replaces
``torch.ao.quantization`` FX, which torch 2.13 deprecates. Its product is a compiled in-memory
module, which the stage cache cannot store.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from lpr_sweep.model_file import ModelFile
from lpr_sweep.quant import CALIB_BATCH, Backend, QuantConfig, register


def quantize(fp32: ModelFile, calib: np.ndarray, method: str, keep: list[str], cfg: QuantConfig, out: Path) -> ModelFile:
    import warnings

    import torch

    # A CPU-only install cannot load torchao's CUDA kernels; it says so once per import, harmlessly.
    logging.getLogger("torchao").setLevel(logging.ERROR)
    logging.getLogger("torchao.kernel.intmm").setLevel(logging.ERROR)
    # torchao 0.18 registers an Enum as a pytree constant at import, which torch 2.13 logs as
    # deprecated; nothing we call is deprecated, and the flow itself is the supported PT2E one.
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    from torchao.quantization.pt2e.observer import MinMaxObserver
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    example = torch.from_numpy(calib[:2])
    dynamic = {"x": {0: torch.export.Dim("batch", min=1)}}
    graph = torch.export.export(fp32.module, (example,), dynamic_shapes=dynamic).module()
    qconfig = xiq.get_default_x86_inductor_quantization_config()
    if method == "minmax":
        act = qconfig.input_activation
        act = type(act)(**{**act.__dict__, "observer_or_fake_quant_ctr": MinMaxObserver.with_args(eps=2**-12)})
        qconfig = type(qconfig)(act, act, qconfig.weight, qconfig.bias, qconfig.is_qat)
    quantizer = xiq.X86InductorQuantizer().set_global(qconfig)
    for name in keep:
        quantizer.set_module_name_qconfig(name, None)
    with warnings.catch_warnings():
        # LPRNet's max-pools follow un-quantized ops by design; the quantizer warns about each one.
        warnings.filterwarnings("ignore", message="The input of maxpool2d is not quantized")
        graph = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for i in range(0, len(calib), CALIB_BATCH):
            graph(torch.from_numpy(calib[i : i + CALIB_BATCH]))
    graph = convert_pt2e(graph)
    artifact = out / "model_int8.pt2"
    torch.export.save(torch.export.export(graph, (example,), dynamic_shapes=dynamic), str(artifact))
    module = torch.compile(graph, dynamic=True) if cfg.compile else graph
    return ModelFile(module, fp32.path, artifact)


register(Backend("torch_x86", methods=("histogram", "minmax"), runtimes=("torch",), quantize=quantize,
                 cacheable=False, packages=("torch", "torchao")))
