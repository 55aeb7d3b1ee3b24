"""nanolm: the course library of Zero to NanoChat.

Each module holds one idea that a notebook first builds from scratch in front of the learner;
the tested version lives here so later notebooks, tests and the server share one copy. The
modules sit in layers, and imports point only up this list (an import contract in tests/ checks it):

    core    paths, files, profiles, device, artifacts, data, report, plotting, syllabus, setup
    text    pretokenize, bpe (tokenizer), bpe_train, reference, charset, corpus, shards
    model   layers, attend, kvcache, sampling, gpt, llama, mla, moe, hf
    train   config, schedules, optimizer, checkpoint, loop, throughput, flops
    eval    models (every model the course evaluates, loaded with its tokenizer in one call)
    teach   what one early notebook teaches and nothing later needs (value, optim, gradcheck,
            mnist, rnn, attention, transformer); only notebooks and tests import it

text and model stand on core alone; train on core, text and model; eval on all of those. Import
modules by layer: `from nanolm.core import artifacts`, `from nanolm.model import gpt`.
"""

__version__ = "0.2.0"
