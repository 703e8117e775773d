"""Check scalabl plan's memory estimate against the measured peak of one training step on the CPU.

For the embedded SmolLM2-135M and two tiny random Llamas, in a fresh process each: load the model
(float32), wrap it with ScalaBL (r = 8, q/v), note the resident memory, run one training step on a
batch of ARC-Easy questions (forward, backward, AdamW), and take the peak resident memory
(``ru_maxrss``). The measured training overhead is peak - before; the estimate is the plan's
trainable state + activations + log-probabilities for the same tokens (the batch's prompt and answer
tokens, counted by the scorer). Resident memory includes allocator slack and one-off costs of a
first step; a second step is profiled for the bytes held by tensors (what a GPU's allocator would
have to hold), with benchmarks/speed.py's ``tensor_peak``.
The embedded model is measured a second time with gradient checkpointing (``--gradient-checkpointing``:
non-reentrant checkpoints per decoder layer, continuations scored without the prompt cache, so the
tokens are every choice's prompt + answer) against the plan's checkpointing estimate.

    python benchmarks/plan_check.py

Writes benchmarks/results/plan_check.json and .md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from scalabl.io import write_json, write_text
from scalabl.tables import markdown_table

RESULTS = Path(__file__).parent / "results"
CHILD = r"""
import json, resource, sys, tempfile
import torch
import torch.nn.functional as F
torch.set_num_threads(1)
from transformers import LlamaConfig, LlamaForCausalLM
from scalabl.data import load_splits
from scalabl.methods import MethodConfig, get_method
from scalabl.models import load_model
from scalabl.scoring import Scorer
name, batch_size, gc = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
model, tok = load_model()  # the tokenizer (and, for the embedded case, the model)
if name != "smollm2-135m-instruct":
    hidden, layers = {"tiny-256": (256, 4), "tiny-512": (512, 8)}[name]
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=int(2.75 * hidden),
                      num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=4,
                      max_position_embeddings=2048, tie_word_embeddings=False)
    del model
    model = LlamaForCausalLM(cfg)
    path = tempfile.mkdtemp()
    open(path + "/config.json", "w").write(cfg.to_json_string())
    config_ref = path + "/config.json"
else:
    config_ref = name
wrapped = get_method(MethodConfig(method="scalabl", rank=8)).wrap(model)
scorer = Scorer(tok, reuse_prompt=not gc)
if gc:
    wrapped.get_base_model().activation_checkpointing_enable({"use_reentrant": False})
batch = load_splits("arc_easy").train[:batch_size]
enc = [scorer.encode(e) for e in batch]
answer_tokens = sum(len(c) for e in enc for c in e.choices)
# cached: each prompt once; checkpointed (no cache): each choice's row carries its prompt
prompt_tokens = sum(len(e.prompt) * (len(e.choices) if gc else 1) for e in enc)
opt = torch.optim.AdamW([p for p in wrapped.parameters() if p.requires_grad], lr=1e-4)
labels = torch.tensor([e.label for e in batch])
wrapped.train()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
from scalabl.bayesian import clear_noise, sampling
with sampling(wrapped, True):
    loss = F.cross_entropy(scorer.class_logits(wrapped, batch, sample=True, keep_noise=True), labels)
    loss.backward()
    clear_noise(wrapped)
opt.step()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
# A second step under the profiler: bytes held by tensors (no allocator slack; speed.py's method).
sys.path.insert(0, BENCHMARKS)
from speed import tensor_peak
opt.zero_grad(set_to_none=True)
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
    with sampling(wrapped, True):
        loss = F.cross_entropy(scorer.class_logits(wrapped, batch, sample=True, keep_noise=True), labels)
        loss.backward()
        clear_noise(wrapped)
    opt.step()
tensors = tensor_peak(prof)
print(json.dumps({"config": config_ref, "before": before, "peak": peak, "tensors": tensors, "prompt_tokens": prompt_tokens,
                  "answer_tokens": answer_tokens}))
"""


def measure(name: str, batch_size: int, gc: bool = False) -> dict:
    child = CHILD.replace("BENCHMARKS", repr(str(Path(__file__).parent)))
    argv = [sys.executable, "-c", child, name, str(batch_size), "1" if gc else "0"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    from scalabl.plan import GB, make_plan

    rows = []
    cells = [(n, b, False) for n in ("tiny-256", "tiny-512", "smollm2-135m-instruct") for b in (4, 8)]
    cells += [("smollm2-135m-instruct", b, True) for b in (4, 8)]
    for name, batch_size, gc in cells:
        m = measure(name, batch_size, gc)
        tokens = m["prompt_tokens"] + m["answer_tokens"]
        plan = make_plan(
            m["config"],
            method="scalabl",
            dtype="float32",
            batch_size=batch_size,
            seq_len=round(tokens / batch_size),
            answer_tokens=round(m["answer_tokens"] / batch_size),
            gradient_checkpointing=gc,
        )
        est = sum(plan.memory_gb[k] for k in ("trainable_state", "activations", "logprobs")) * GB
        measured = m["peak"] - m["before"]
        rows.append(
            {
                "model": name,
                "checkpointing": "yes" if gc else "no",
                "batch": batch_size,
                "tokens": tokens,
                "estimate_mb": est / 2**20,
                "measured_mb": measured / 2**20,
                "ratio": measured / est,
                "tensors_mb": m["tensors"] / 2**20,
                "tensor_ratio": m["tensors"] / est,
            }
        )
        print(rows[-1], flush=True)
    write_json(RESULTS / "plan_check.json", rows)
    table = markdown_table(
        rows,
        [
            "model",
            "checkpointing",
            "batch",
            "tokens",
            "estimate_mb",
            "measured_mb",
            "ratio",
            "tensors_mb",
            "tensor_ratio",
        ],
        {
            "estimate_mb": "estimate (MB)",
            "measured_mb": "RSS peak - before, 1st step (MB)",
            "ratio": "RSS / estimate",
            "tensors_mb": "tensor peak, 2nd step (MB)",
            "tensor_ratio": "tensors / estimate",
        },
        {
            "estimate_mb": "{:.0f}",
            "measured_mb": "{:.0f}",
            "ratio": "{:.2f}",
            "tensors_mb": "{:.0f}",
            "tensor_ratio": "{:.2f}",
        },
    )
    text = (
        "# scalabl plan: estimate vs measured training memory (CPU, float32)\n\n"
        "`python benchmarks/plan_check.py`: one ScalaBL training step (r = 8, q/v) on ARC-Easy questions, "
        "peak resident memory minus resident memory before the step (the first step, in a fresh process), "
        "and the peak of bytes held by tensors in a second step (PyTorch profiler allocation events, "
        "benchmarks/speed.py's tensor_peak), against the plan's trainable state + activations + "
        "log-probabilities for the same tokens. With checkpointing, continuations are scored without the "
        "prompt cache, so every choice's row carries its prompt (more tokens).\n\n" + table + "\n"
    )
    write_text(RESULTS / "plan_check.md", text)
    print(text)


if __name__ == "__main__":
    main()
