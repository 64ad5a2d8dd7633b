"""What launch/export.py writes from a base checkpoint and a LoRA adapter (paths are flags: --base, --adapter...)."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    # Comma-separated: peft (LoRA adapter directory), merged (full bf16 HF model), bumblebee (merged, refused for a
    # model Bumblebee cannot load), gguf_f16, gguf_q8_0, and the K-quants gguf_q4_k_m, gguf_q5_k_m, gguf_q6_k (made by
    # llama.cpp's quantizer: needs the `serve` extra). Each GGUF comes with an Ollama Modelfile.
    config.formats = "peft,merged,gguf_q8_0"
    config.dtype = "bfloat16"  # of the merged model's weights
    config.max_shard_gb = 5.0  # merged safetensors shards at most this size
    # The base model's Hub id, recorded in adapter_config.json and the model card ('' = the --base directory's name).
    config.base_model = ""
    config.name = "devstral-elixir"  # the model's folder under --out, GGUF general.name and file stem
    config.version = ""  # the version's folder under <out>/<name> ('' = the next v<n>)
    config.overwrite = False  # replace an existing version (still written whole, then swapped in)
    return config
