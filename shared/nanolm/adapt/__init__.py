"""adapt: changing a trained model cheaply, the layer notebooks 11-13 build.

Its modules, each one idea:
    lora      LoRA, rsLoRA and DoRA from scratch on our Llama (fused matrices adapted by row blocks), merge/unmerge
    adapters  adapters as PEFT-format files (adapter_model.safetensors + adapter_config.json) and course artifacts
    merging   combining adapters: linear, concatenation, SVD, TIES, DARE, each against the exact sum
    quant     NF4 (with double quantization), int8 and Q4_1 from scratch, bit-identical to bitsandbytes and gguf;
              NF4Linear, the frozen 4-bit base of QLoRA
    qlora     LoRA adapters on a frozen NF4 base (QLoRALinear), dequantizing again in backward instead of storing
    finetune  supervised fine-tuning with loss masks: the title -> abstract task, batches, a training loop, memory
    continual the accuracy matrix and its metrics (ACC, BWT, FWT, forgetting), replay buffers and batches
    ewc       Elastic Weight Consolidation: diagonal Fisher (true and empirical) and the quadratic anchor
    router    picks an adapter from a prompt: nearest centroid of the frozen model's mean hidden state
    cl_tasks  notebook 12's four-task exact-match bench (byte-level), exact match in one teacher-forced pass
    cl_methods  learning a task sequence with one method (sequential, replay, EWC, SSR, adapters) into R
    learn     teaching a model made-up facts through LoRA, and the paired retention check (16's /learn)
    library   several adapters and their router as one artifact (adapter-library)
    sft_data  chat SFT conversations: GSM8K with calculator calls, facts, identity, Self-Instruct, Topical-Chat
    reward    a reward model (scalar head, Bradley-Terry) and HH-RLHF preference pairs
    dpo       DPO's losses (sigmoid, hinge, IPO) and implicit-reward metrics, equal to TRL
    grpo      GRPO's group advantages, k3 KL and clipped surrogate, equal to TRL
    rollout   GRPO's loop: sample a group per prompt, reward it, one clipped policy-gradient step
    arithmetic  problems with exact answers: tool and direct conversations, the verifiable reward
It stands on core, text, model, train and eval (it measures what it changes with eval's functions); only use and
teach sit above it, and teach never imports it.
"""
