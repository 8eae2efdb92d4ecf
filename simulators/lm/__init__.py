"""The language-model user: `UserLM` over a backbone adapter, its KV cache and attention.

- `model`: `UserLM` (embeddings, the one forward, the user's head), `SimulatorConfig`,
  packed training loss.
- `backbone` / `gpt2`: the adapter interface and GPT-2 behind it.
- `cache`, `attention`, `kernels`: the preallocated KV cache, the attention objects and CPU
  kernels of inference.
"""
