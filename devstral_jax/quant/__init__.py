"""Frozen-weight storage for QLoRA: NF4 with double quantization (bitsandbytes semantics) and int8.

    formats.py  the one table of storage formats (dense, nf4, int8): quantize, dequantize, shard, name
    nf4.py      4-bit NormalFloat, blocks of 64, double-quantized scales, packing
    int8.py     per-output-channel absmax int8
    report.py   bytes, error and SNR of each quantized tensor
"""
