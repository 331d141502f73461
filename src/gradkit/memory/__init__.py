"""Memory-lean optimizer state: storage policies (bf16, block-wise 8-bit) and low-rank projection."""

from gradkit.memory.accounting import StateBytes, state_bytes
from gradkit.memory.fira import Fira
from gradkit.memory.frugal import FRUGAL
from gradkit.memory.galore import GaLore, QGaLore
from gradkit.memory.projection import (
    dequantize_int4,
    lowrank_memory_rows,
    quantize_int4,
    random_basis,
    svd_basis,
)
from gradkit.memory.quantization import (
    CodeMap,
    code_map,
    dequantize_blockwise,
    dynamic_map,
    quantize_blockwise,
    stochastic_round_bf16,
)

__all__ = [
    "FRUGAL",
    "CodeMap",
    "Fira",
    "GaLore",
    "QGaLore",
    "StateBytes",
    "code_map",
    "dequantize_blockwise",
    "dequantize_int4",
    "lowrank_memory_rows",
    "quantize_int4",
    "random_basis",
    "svd_basis",
    "dynamic_map",
    "quantize_blockwise",
    "state_bytes",
    "stochastic_round_bf16",
]
