"""eval: what the course measures its models with; 11-16 call the same functions to measure what they change.

Its modules, each one idea:
    models         the models the course evaluates and uses, each loaded with its tokenizer in one call
    scorer         multiple choice by log-probability, lm-evaluation-harness's tokenization, shared-prefix KV reuse
    tasks          HellaSwag and ARC from data/, prepared as the harness prepares them, and scored
    harness        lm-evaluation-harness itself, run offline on the same items: the reference
    gsm8k          grade-school math: few-shot prompt, strict and flexible answer extraction
    humaneval      code: completions run in a separate, limited process (core.process); unbiased pass@k
    perplexity     sliding-window loss as token and word perplexity and bits per byte
    stats          intervals, centered accuracy and a CORE-style average
    contamination  n-gram overlap between training text and benchmark items
    quality        distinct-n and repetition of generated samples
It stands on core, text, model and train; only teach sits above it in the layer contract, and teach never imports it.
"""
