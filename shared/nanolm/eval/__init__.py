"""eval: what the course measures its models with, starting from the models themselves.

Its modules, each one idea: models (the models the course evaluates and uses, each loaded with its
tokenizer in one call; the `smollm2` artifact that is also a Hugging Face model folder). It stands on
core, text, model and train; only teach sits above it in the layer contract, and teach never imports it.
"""
