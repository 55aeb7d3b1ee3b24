"""adapt: changing a trained model cheaply, the layer notebooks 11-13 build.

Its modules, each one idea:
    lora      LoRA, rsLoRA and DoRA from scratch on our Llama (fused matrices adapted by row blocks), merge/unmerge
    adapters  adapters as PEFT-format files (adapter_model.safetensors + adapter_config.json) and course artifacts
    merging   combining adapters: linear, concatenation, SVD, TIES, DARE, each against the exact sum
    quant     NF4 (with double quantization), int8 and Q4_1 from scratch, bit-identical to bitsandbytes and gguf;
              NF4Linear, the frozen 4-bit base of QLoRA
    qlora     LoRA adapters on a frozen NF4 base (QLoRALinear), dequantizing again in backward instead of storing
    finetune  supervised fine-tuning with loss masks: the title -> abstract task, batches, a training loop, memory
It stands on core, text, model, train and eval (it measures what it changes with eval's functions); only use and
teach sit above it, and teach never imports it.
"""
