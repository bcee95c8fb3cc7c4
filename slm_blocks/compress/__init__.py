"""Compress and deploy: weight quantization (int8 / int4 with torchao), quantized transformers exports,
GGUF files for llama.cpp / Ollama, and the size-speed-quality table. Builds on `slm_blocks.model`,
`slm_blocks.training` and `slm_blocks.sharing`; nothing here imports the UI."""
