"""adapt: changing a trained model cheaply, the layer notebooks 11-13 build (LoRA, quantization, continual learning,
alignment).

It stands on core, text, model, train and eval (it measures what it changes with eval's functions); only use and
teach sit above it, and teach never imports it.
"""
