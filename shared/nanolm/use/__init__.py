"""use: the layer where a trained model meets the world, the one notebooks 14 and 16 build.

Its modules, each one idea:
    sandbox   the Python tool's sandbox: core's process runner plus namespaces, Landlock and seccomp, each layer
              detected and reported; it refuses to run when a layer it requires is missing
    rag       a document store, BM25 from scratch (equal to rank_bm25), dense retrieval in a faiss index, recall@k
    tools     the tools a model may call (calculator, python, search), each a name -> function on a string
    agent     the tool loop: generate, run the calls, put the results back, go on; a step cap and a time cap
It stands on every layer below it (core, text, model, train, eval, adapt); nothing imports it but the notebooks.
"""
