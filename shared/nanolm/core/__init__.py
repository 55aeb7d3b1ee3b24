"""core: what every layer stands on (paths, atomic files, profiles, device, artifacts, data, report, plotting,
the GGUF file format and its quant blocks, and process: the one runner of untrusted code with time, memory and file
limits).

It imports nothing else of nanolm."""
