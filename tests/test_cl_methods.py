"""nanolm.adapt.cl_tasks and cl_methods: the task bench, exact-match scoring, and the methods' invariants."""

import pytest
import torch

from nanolm.adapt import cl_methods, cl_tasks, continual, lora
from nanolm.adapt.finetune import IGNORE
from nanolm.model.llama import Llama, LlamaConfig

CFG = LlamaConfig(vocab_size=cl_tasks.VOCAB, block_size=32, n_layer=1, n_head=2, n_embd=32)


def tiny(seed=0):
    torch.manual_seed(seed)
    return Llama(CFG).eval()


def micro_study(steps=3):
    data = {t: cl_tasks.examples(t, 12 if t == "fact" else 40, 10, seed=0) for t in cl_tasks.TASKS}
    text = "once upon a time there was a little cat who liked to play in the sun. " * 20
    return cl_methods.Study(list(cl_tasks.TASKS), data, cl_tasks.text_windows(text, 16, 40, 0),
                            cl_tasks.text_windows(text, 16, 8, 1), steps=steps, batch_size=4, keep=5, keep_text=10,
                            fisher_examples=4)


def test_task_rules_and_splits():
    assert cl_tasks._answer("shift", "bcde") == "cdef" and cl_tasks._answer("back", "bcde") == "abcd"
    assert cl_tasks._answer("mirror", "bcde") == "ihgf"
    assert all(cl_tasks._answer("mirror", cl_tasks._answer("mirror", x)) == x for x in cl_tasks._inputs("mirror")[:50])
    for task in ("shift", "back", "mirror"):
        train, test = cl_tasks.examples(task, 300, 100, seed=3)
        assert len(train) == 300 and len(test) == 100 and not {p for p, _ in train} & {p for p, _ in test}
        assert (train, test) == cl_tasks.examples(task, 300, 100, seed=3)  # deterministic
        prompt, answer = train[0]
        assert prompt.startswith(f"{task}:") and prompt.endswith("=") and answer.endswith(cl_tasks.END)
    facts, table = cl_tasks.examples("fact", 30, 0, seed=1)
    assert facts == table and len({p for p, _ in facts}) == 30  # the test of a fact table is the table
    with pytest.raises(ValueError, match="1680 inputs"):
        cl_tasks.examples("shift", 1600, 100)
    with pytest.raises(ValueError, match="unknown task"):
        cl_tasks.examples("sort", 10, 10)


def test_encode_pairs_labels_the_answer_or_the_whole_line():
    (ids, labels), = cl_tasks.encode_pairs([("ab=", "cd\n")])
    assert ids == list(b"ab=cd") and labels == [IGNORE, IGNORE] + list(b"cd\n")
    (ids, labels), = cl_tasks.encode_pairs([("ab=", "cd\n")], whole_line=True)
    assert ids == list(b"ab=cd") and labels == list(b"b=cd\n")


def test_exact_match_equals_greedy_decoding_on_a_trained_model():
    model = tiny()
    pairs = cl_tasks.examples("fact", 24, 0, seed=0)[0]
    stream = continual.replay_batches(cl_tasks.encode_pairs(pairs), [], 0.0, 8, 0)
    cl_methods.train_task(model, stream, 150, 1e-2)
    probe = pairs + cl_tasks.examples("shift", 10, 10)[1]  # remembered facts and unlearned letters
    fast = cl_tasks.exact_match(model, probe, batch_size=7)  # batches with padding
    slow = [cl_tasks.greedy(model, p, max_new=len(a)) == a for p, a in probe]
    assert fast == slow
    assert 0 < sum(fast) < len(probe)  # both right and wrong answers are compared


def test_synthesize_keeps_distinct_well_formed_inputs_and_answers_them(monkeypatch):
    def fake_sample(model, prompts, n_new, generator, temperature=1.0):
        if temperature:  # the writer: duplicates, a wrong length, non-ASCII, no '='
            return ["bcde=x", "bcde=y", "cdef=", "bc=", "b\u00e9cd=", "bcdefgh"][: len(prompts)]
        return [p[6:-1].upper() + "\nzz" if p != "shift:cdef=" else "NOEND" for p in prompts]  # the answerer

    monkeypatch.setattr(cl_tasks, "sample", fake_sample)
    out = cl_tasks.synthesize(None, "shift", 6, torch.Generator())
    assert out == [("shift:bcde=", "BCDE\n")]  # cdef's answer never ended: dropped


def test_run_does_not_touch_the_model_and_fills_the_matrix():
    model, study = tiny(), micro_study()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run = cl_methods.run(model, study, "replay", seed=0, ratio=0.25)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    T = len(study.tasks)
    assert len(run.R) == T and all(len(row) == T for row in run.R) and len(run.text_loss) == T + 1
    buffer = continual.ReplayBuffer()  # what replay kept: 10 text windows and 5 examples of every task
    buffer.add(cl_methods.TEXT, study.text_train, 10, 0)
    for task in study.tasks:
        buffer.add(task, cl_methods._encoded(study, task), 5, 0)
    assert run.memory_bytes == buffer.memory_bytes()
    with pytest.raises(ValueError, match="unknown method"):
        cl_methods.run(model, study, "magic", seed=0)


def test_no_replay_and_no_penalty_equal_sequential_fine_tuning():
    model, study = tiny(), micro_study(steps=4)
    seq = cl_methods.run(model, study, "sequential", seed=1)
    for method, kw in (("replay", {"ratio": 0.0}), ("ewc", {"lam": 0.0})):
        other = cl_methods.run(model, study, method, seed=1, **kw)
        assert other.R == seq.R and other.text_loss == seq.text_loss, method
    assert cl_methods.run(model, study, "ewc", seed=1, lam=1e6).text_loss != seq.text_loss  # the penalty acts


def test_lora_per_task_forgets_nothing_with_the_oracle_and_routes_like_it_when_right():
    model, study = tiny(), micro_study(steps=5)
    oracle, routed = cl_methods.run_lora(model, study, seed=0, r=2, alpha=4)
    R = oracle.R
    assert all(R[i][j] == R[j][j] for j in range(len(R)) for i in range(j, len(R)))  # old adapters never change
    assert continual.forgetting(R) == 0 and oracle.text_loss == [oracle.text_loss[0]] * len(oracle.text_loss)
    for i, row in enumerate(routed.R):  # wherever the router sent every prompt of a task home, routed = oracle
        for j, task in enumerate(study.tasks[: i + 1]):
            if all(p == task for p in routed.routes[task][i]):
                assert row[j] == R[i][j]
    per_adapter = lora.trainable_parameters(lora.apply_lora(tiny(), r=2, alpha=4))[1]  # bytes of A and B
    assert oracle.memory_bytes == per_adapter * len(study.tasks) and routed.memory_bytes > oracle.memory_bytes


def test_stacked_adapters_keep_one_model():
    model, study = tiny(), micro_study(steps=2)
    nested = cl_methods.run_stacked(model, study, "nested", seed=0, r=2, alpha=4)
    shared = cl_methods.run_stacked(model, study, "shared-lora", seed=0, r=2, alpha=4)
    assert nested.memory_bytes == len(study.tasks) * shared.memory_bytes  # one adapter's bytes per task vs once
    assert not any(".adapters." in k for k in nested.model.state_dict())  # merged away for good
    with pytest.raises(ValueError, match="nested or shared-lora"):
        cl_methods.run_stacked(model, study, "stack", seed=0)
