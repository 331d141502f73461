"""Memory-lean optimizer state: storage policies (bf16, block-wise 8-bit) and low-rank projection."""
