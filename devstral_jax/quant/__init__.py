"""Frozen-weight storage for QLoRA: NF4 with double quantization (bitsandbytes semantics) and int8."""
