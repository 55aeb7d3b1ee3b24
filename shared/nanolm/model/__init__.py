"""model: the two model families (GPT, Llama) and their parts (layers, attention kernels, KV cache, sampling).

It stands on core only: a model never knows how it is trained."""
