"""devstral_jax: QLoRA fine-tuning of Devstral Small into an Elixir coding model, in JAX/Flax."""

from setuptools import find_packages, setup

RUNTIME = [
    "jax>=0.10",
    "flax>=0.12.8",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12",
    "grain>=0.2.18",
    "transformers>=5.0",
    "tokenizers>=0.21",
    "jinja2>=3.1.6",  # chat templates (transformers renders them; it does not require jinja2 itself)
    "safetensors>=0.8",
    "tensorstore>=0.1.86",
    "httpx>=0.28",
    "absl-py>=2.3",
    "ml-collections>=1.1",
    "mistral-common>=1.13",
    "numpy>=2.0",
    "tqdm>=4.66",
    "array-record>=0.8",
    "datasketch>=1.6",
    "tensorboardX>=2.6",
    "matplotlib>=3.8",
    "sacrebleu>=2.4",
    "gguf>=0.17",
    "detect-secrets>=1.5",
    # Guides, notebooks and books (data_pipeline/markdown.py, pdf.py, epub.py). PyMuPDF 2 also pulls a layout
    # model and onnxruntime, which reading text and fonts does not need.
    "markdown-it-py>=3.0",
    "pymupdf>=1.24,<2",
    "lxml>=5.0",
    "xxhash>=3.0",  # checkpoint integrity manifests: a hash faster than the disk
]

EXTRAS = {
    # Reference implementations for parity tests. torch is pinned to the CPU build on disk:
    # an unpinned torch would pull several GB of CUDA wheels.
    "test": ["pytest>=8", "torch==2.13.0", "bitsandbytes>=0.48", "peft>=0.17", "accelerate>=1.0",
             "google-cloud-storage>=3.0"],  # tests/test_remote_storage.py: tensorboardX writes gs:// through it
    # llama.cpp in this process: the K-quant GGUF exports, launch/serve.py and the GGUF tests. Source only on PyPI:
    # pip compiles llama.cpp (see the Makefile for the CMAKE_ARGS that keep it portable and small).
    "serve": ["llama-cpp-python[server]==0.3.36"],
    "gpu": ["jax[cuda12]>=0.10"],
    # Compile for an H100/H200 on a machine without a GPU (benchmarks/step_memory.py --target=h100): the CUDA
    # plugin of exactly the JAX this project pins, with its CUDA libraries (cuDNN for the cudnn kernel).
    "gpu-aot": ["jax==0.10.2", "jaxlib==0.10.2", "jax-cuda12-plugin[with-cuda]==0.10.2", "jax-cuda12-pjrt==0.10.2"],
    "tpu": ["jax[tpu]>=0.10"],
    # gs:// workdirs and data through etils.epath (Orbax and TensorStore need nothing more); TensorBoard's event
    # files through google-cloud-storage (tensorboardX).
    "gcs": ["gcsfs", "google-cloud-storage>=3.0"],
}

setup(
    name="devstral_jax",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.11",
    packages=find_packages(include=["devstral_jax", "devstral_jax.*", "data_pipeline", "data_pipeline.*"]),
    package_data={"data_pipeline": ["sources/*.exs"],
                  "devstral_jax": ["data/sample/*", "data/general_code/*", "elixir/*.exs", "eval/*.exs", "eval/data/*"]},
    install_requires=RUNTIME,
    extras_require=EXTRAS,
)
