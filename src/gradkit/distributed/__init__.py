"""Communication-efficient distributed training on ``torch.distributed``.

- Compressors with exact byte accounting, wrapped by error-feedback codecs
  (:mod:`gradkit.distributed.compressors`);
- a DDP communication hook for any codec (:mod:`gradkit.distributed.hooks`) and Deep Gradient
  Compression as a codec for it (:mod:`gradkit.distributed.dgc`);
- local-update outer loops: DiLoCo, Streaming DiLoCo, SparseLoCo and the quadratic
  synchronization rule (:mod:`gradkit.distributed.diloco`);
- byte counters (:class:`CommunicationCounters`).

Works with any backend (gloo on CPU, nccl on GPU) and with ``torchrun``; see docs/distributed.md.
"""

from gradkit.distributed._exchange import CommunicationError, ExchangeItem, start_exchange
from gradkit.distributed.accounting import CommunicationCounters
from gradkit.distributed.compressors import (
    EF21,
    FP4E3M0,
    QSGD,
    ChunkTopK,
    Compressed,
    Compressor,
    ErrorFeedback,
    GradientCodec,
    NoCompression,
    NoFeedback,
    RandomK,
    SampledTopK,
    ScaledSign,
    TopK,
    as_codec,
)
from gradkit.distributed.dgc import DGC, PAPER_SPARSITY_SCHEDULE, register_dgc_hook, sparsity_at
from gradkit.distributed.diloco import (
    DiLoCo,
    QuadraticSyncRule,
    SparseLoCo,
    StreamingDiLoCo,
    strided_fragments,
)
from gradkit.distributed.hooks import (
    CompressionHookState,
    compress_matrices,
    compression_hook,
    register_compression_hook,
)
from gradkit.distributed.launch import init_from_env

__all__ = [
    "init_from_env",
    "DGC",
    "EF21",
    "PAPER_SPARSITY_SCHEDULE",
    "QSGD",
    "ChunkTopK",
    "CommunicationCounters",
    "CommunicationError",
    "Compressed",
    "CompressionHookState",
    "Compressor",
    "DiLoCo",
    "ErrorFeedback",
    "FP4E3M0",
    "ExchangeItem",
    "GradientCodec",
    "NoCompression",
    "NoFeedback",
    "QuadraticSyncRule",
    "RandomK",
    "SampledTopK",
    "ScaledSign",
    "SparseLoCo",
    "StreamingDiLoCo",
    "TopK",
    "as_codec",
    "compress_matrices",
    "compression_hook",
    "register_compression_hook",
    "register_dgc_hook",
    "sparsity_at",
    "start_exchange",
    "strided_fragments",
]
