"""text: from characters to token ids (pre-tokenization, byte-level BPE and its trainer, charset, corpus, shards).

It stands on core only."""
