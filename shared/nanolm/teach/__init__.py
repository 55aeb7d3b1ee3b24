"""teach: what one early notebook builds and nothing later needs (autograd Value, optimizers, gradient
checks, MNIST, RNNs, seq2seq attention, the encoder-decoder transformer).

It stands on core (and model where it must); only notebooks and tests import it."""
