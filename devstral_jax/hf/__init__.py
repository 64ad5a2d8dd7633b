"""Hugging Face interoperability: parameter names, and (later) streamed import and export."""
