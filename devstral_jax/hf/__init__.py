"""Hugging Face interoperability: checkpoints in (HF and Mistral consolidated, streamed, quantize-on-load) and
serving formats out (PEFT adapter, merged HF model, GGUF).

    param_map.py       the one HF name <-> our parameter mapping (and consolidated names)
    safetensors_io.py  safetensors read/written one tensor at a time
    consolidated.py    params.json and the q/k RoPE row order of Mistral's format
    model_dir.py       a checkpoint directory, checked and read as HF tensors
    load.py            checkpoint -> our model, sharded on a mesh, quantized on load
    peft.py            LoRA adapters as PEFT directories
    export.py          merged MistralForCausalLM directories
    gguf_export.py     GGUF (F16, Q8_0) for llama.cpp / Ollama
    model_card.py      the README.md of each export
    atomic.py          outputs written whole or not at all
"""
