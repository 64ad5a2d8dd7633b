"""Hugging Face interoperability: checkpoints in (HF and Mistral consolidated, streamed, quantize-on-load) and
serving formats out (PEFT adapter, merged HF model, GGUF, Ollama Modelfile), as versions.

    param_map.py       the one HF name <-> our parameter mapping (and consolidated names)
    safetensors_io.py  safetensors read/written one tensor at a time
    consolidated.py    params.json and the q/k RoPE row order of Mistral's format
    model_dir.py       a checkpoint directory, checked and read as HF tensors
    load.py            checkpoint -> our model, sharded on a mesh, quantized on load
    peft.py            LoRA adapters as PEFT directories
    export.py          merged MistralForCausalLM directories (and what Bumblebee can load)
    tokenizer_files.py the merged directory's tokenizer files, made from Tekken
    chat_template.py   the instruct format as Jinja (HF, GGUF) and Go (Ollama) templates
    gguf_export.py     GGUF (F16, Q8_0; K-quants through llama.cpp) for llama.cpp / Ollama
    llama_cpp.py       llama.cpp in-process: its quantizer and its OpenAI-compatible server
    ollama.py          the Modelfile beside each GGUF
    model_card.py      the README.md of each export
    versions.py        <out>/<name>/<version>/ and its manifest.json
"""
