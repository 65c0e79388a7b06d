"""Numeric precision of the loaded model: float32, half precision on CUDA, or dynamic int8 on CPU.

Dynamic int8 uses ``torch.ao.quantization.quantize_dynamic`` on the ``torch.nn.Linear`` layers:
weights are stored as int8 with one scale per output channel, activations are quantized on the fly
per batch (one scale per tensor), and the matmuls run in fbgemm (x86) or qnnpack (ARM) int8
kernels. Per-channel weights, not torch's per-tensor default: on all-MiniLM-L6-v2 per-tensor
weights moved embeddings to a mean cosine of 0.94 with float32 (0.97 per-channel) for the same
speed. Because activation scales are per batch, an int8 answer moves slightly (~1e-4 in a score)
with its batch-mates. It is the one int8 path that
works in the installed torch (2.13) with no extra package and no calibration data; torch marks it
deprecated in favour of torchao (see docs/decisions.md, "int8 quantization"). Its deprecation
warnings are silenced here, once, so they do not fill the server log on every start.

Embeddings and LayerNorm stay float32; only the Linear layers (about 90 % of a BERT encoder's
FLOPs at short lengths) change. The accuracy cost is measured in docs/benchmarks.md.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from inference.errors import ModelLoadError
from inference.settings import DeviceChoice, DtypeChoice, QuantizeChoice, combination_problem

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True, slots=True, kw_only=True)
class Precision:
    """How the model's numbers are stored; reported by ``/version`` and ``inference_model_info``."""

    quantize: QuantizeChoice = "none"
    dtype: DtypeChoice = "float32"


def pick_device(choice: DeviceChoice, precision: Precision) -> str:
    """The torch device for ``choice`` under ``precision``; ``ModelLoadError`` if impossible.

    ``auto`` is cuda when torch sees a GPU, else cpu -- except that dynamic int8 only runs on
    CPU, so ``auto`` with ``--quantize dynamic-int8`` is always cpu. Half precision on a machine
    without a GPU is refused rather than silently run in float32.
    """
    cuda = torch.cuda.is_available()
    if choice == "auto":
        resolved = "cuda" if cuda and precision.quantize == "none" else "cpu"
    elif choice == "cuda" and not cuda:
        raise ModelLoadError("--device cuda was given but torch sees no CUDA device")
    else:
        resolved = choice
    if choice == "auto" and resolved == "cpu" and precision.dtype != "float32":
        raise ModelLoadError(
            f"--dtype {precision.dtype} needs a CUDA device and torch sees none "
            "(--device auto resolved to cpu); on CPU use --quantize dynamic-int8 or float32"
        )
    problem = combination_problem(
        "cuda" if resolved == "cuda" else "cpu", precision.quantize, precision.dtype
    )
    if problem:
        raise ModelLoadError(problem)
    return resolved


def apply_precision(model: torch.nn.Module, precision: Precision, device: str) -> torch.nn.Module:
    """Move ``model`` to ``device`` in ``precision``; returns the model to use (eval mode)."""
    model = model.to(device).eval()
    if precision.dtype != "float32":
        model = model.to(_DTYPES[precision.dtype])
    if precision.quantize == "dynamic-int8":
        model = quantize_dynamic_int8(model)
    return model


def quantize_dynamic_int8(model: torch.nn.Module) -> torch.nn.Module:
    """``model``, changed in place: its ``nn.Linear`` layers become int8 dynamic-quantized ones."""
    with warnings.catch_warnings():
        # torch 2.13 deprecates torch.ao eager quantization (moving to torchao) and quantized
        # tensor creation; both still work and are the only int8 path without extra packages.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        quantized: torch.nn.Module = quantize_dynamic(  # type: ignore[no-untyped-call]
            model,
            {torch.nn.Linear: per_channel_dynamic_qconfig},
            dtype=torch.qint8,
            inplace=True,
        )
    if count_quantized_linear(quantized) == 0:
        raise ModelLoadError("--quantize dynamic-int8: the model has no Linear layers to quantize")
    return quantized


def count_quantized_linear(model: torch.nn.Module) -> int:
    """How many modules of ``model`` are dynamically quantized Linear layers."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    return sum(isinstance(module, DynamicQuantizedLinear) for module in model.modules())
