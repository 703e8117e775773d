"""The lm-evaluation-harness model: the harness's own request objects through a tiny trained run,
the posterior mean against the harness's Hugging Face model on the same weights, the model
average against a plain forward per posterior sample, and one harness task end to end offline."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")

from conftest import trained_tiny_run  # noqa: E402
from lm_eval import simple_evaluate  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402
from peft import PeftModel  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from scalabl.config import MethodConfig  # noqa: E402
from scalabl.export import export_peft  # noqa: E402
from scalabl.harness import ContextGroup, ScalaBLLM  # noqa: E402
from scalabl.tasks import get_task  # noqa: E402

CONTEXTS = ["Question: which is hot?\nAnswer:", "The sky is", "Question: which is hot?\nAnswer: "]
PAIRS = [
    (CONTEXTS[0], " the sun"),
    (CONTEXTS[0], " ice"),  # shares its context with the first: one pass over it
    (CONTEXTS[1], " blue and wide"),
    (CONTEXTS[2], "fire"),  # a trailing space moves to the continuation, as the harness does
    ("", "hello"),  # an empty context: the harness's prefix token
]
DOCS = [
    "A short document of two windows.",
    "A longer document that needs more than one window of the small context " * 2,
]


def _requests(kind: str, arguments: list[tuple]) -> list[Instance]:
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(arguments)]


@pytest.fixture(scope="module")
def scalabl_run(tmp_path_factory):
    return trained_tiny_run(
        tmp_path_factory, MethodConfig(method="scalabl", rank=2, sigma_init=0.5), max_test=4
    )


@pytest.fixture(scope="module")
def hf_mean(scalabl_run, tmp_path_factory):
    """The harness's own Hugging Face model on the posterior-mean weights (a stock peft export)."""
    config, out = scalabl_run
    lm = ScalaBLLM(run=str(out), n_samples=0)
    export = tmp_path_factory.mktemp("export") / "peft"
    export_peft(lm.blora, export, base_model=config.model)
    base = AutoModelForCausalLM.from_pretrained(config.model)
    merged = PeftModel.from_pretrained(base, export).merge_and_unload().eval()
    tokenizer = AutoTokenizer.from_pretrained(config.model)
    return HFLM(pretrained=merged, tokenizer=tokenizer, batch_size=2, max_length=48, device="cpu")


def test_posterior_mean_equals_the_harness_hf_model(scalabl_run, hf_mean):
    _, out = scalabl_run
    ours = ScalaBLLM(run=str(out), n_samples=0, batch_size=3, max_length=48)
    got = ours.loglikelihood(_requests("loglikelihood", PAIRS), disable_tqdm=True)
    want = hf_mean.loglikelihood(_requests("loglikelihood", PAIRS), disable_tqdm=True)
    for (lp, greedy), (lp_hf, greedy_hf) in zip(got, want, strict=True):
        assert lp == pytest.approx(lp_hf, abs=1e-4)
        assert greedy == greedy_hf
    rolling = _requests("loglikelihood_rolling", [(d,) for d in DOCS])
    assert len(ours.tok_encode(DOCS[1])) > 2 * ours.max_length  # three windows or more
    got_r = ours.loglikelihood_rolling(rolling, disable_tqdm=True)
    want_r = hf_mean.loglikelihood_rolling(rolling, disable_tqdm=True)
    assert got_r == pytest.approx(want_r, abs=1e-3)
    gen = _requests("generate_until", [(c, {"until": ["\n"], "max_gen_toks": 6}) for c in CONTEXTS])
    assert ours.generate_until(gen, disable_tqdm=True) == hf_mean.generate_until(gen, disable_tqdm=True)


def _plain_loglik(lm: ScalaBLLM, context_ids: list[int], continuation_ids: list[int]) -> float:
    """One forward over context + continuation, the continuation's log-probs summed."""
    ids = torch.tensor([context_ids + continuation_ids])
    logp = torch.log_softmax(lm.model(input_ids=ids).logits[0].float(), dim=-1)
    n = len(context_ids)
    return sum(float(logp[n - 1 + j, t]) for j, t in enumerate(continuation_ids))


def test_model_average_is_log_mean_exp_of_each_samples_likelihood(scalabl_run):
    _, out = scalabl_run
    lm = ScalaBLLM(run=str(out), n_samples=3, seed=5, batch_size=2)
    got = lm.loglikelihood(_requests("loglikelihood", PAIRS[:3]), disable_tqdm=True)
    one_by_one = ScalaBLLM(run=str(out), n_samples=3, seed=5, batch_size=1)
    alone = one_by_one.loglikelihood(_requests("loglikelihood", PAIRS[:3]), disable_tqdm=True)
    assert [lp for lp, _ in alone] == pytest.approx([lp for lp, _ in got], abs=1e-5)  # batch-independent
    spread = []
    for (context, continuation), (lp, _) in zip(PAIRS[:3], got, strict=True):
        ctx, cont = lm._encode_pair(context, continuation)
        group = ContextGroup(context, tuple(ctx), (tuple(cont),))
        per_sample = []
        for k in range(3):
            with torch.no_grad(), lm.method.posterior_sample(lm.model, k, [group], 5, torch.Generator()):
                per_sample.append(_plain_loglik(lm, ctx, cont))
        expected = math.log(sum(math.exp(v) for v in per_sample) / 3)
        assert lp == pytest.approx(expected, abs=1e-4)
        spread.append(max(per_sample) - min(per_sample))
    assert max(spread) > 1e-3  # the samples differ: the average is not one model's answer


def test_rolling_average_is_over_whole_documents(scalabl_run):
    _, out = scalabl_run
    lm = ScalaBLLM(run=str(out), n_samples=2, seed=1, max_length=16)
    (got,) = lm.loglikelihood_rolling(_requests("loglikelihood_rolling", [(DOCS[0],)]), disable_tqdm=True)
    tokens = lm.tok_encode(DOCS[0])
    n = len(tokens)
    assert 16 < n <= 32  # two windows; sample k is one weight sample for both
    per_sample = []
    for k in range(2):
        group = ContextGroup(DOCS[0], (), ())
        with torch.no_grad(), lm.method.posterior_sample(lm.model, k, [group], 1, torch.Generator()):
            first = _plain_loglik(lm, [lm.prefix_token_id], tokens[:16])
            second = _plain_loglik(lm, tokens[n - 17 : 16], tokens[16:])  # 16 tokens of context at most
        per_sample.append(first + second)
    assert got == pytest.approx(math.log(sum(math.exp(v) for v in per_sample) / 2), abs=1e-4)


def test_bad_model_args_are_refused(scalabl_run, tmp_path_factory):
    _, out = scalabl_run
    with pytest.raises(ValueError, match="generation: 'beam' is not one of mean, majority"):
        ScalaBLLM(run=str(out), generation="beam")
    _, tempered = trained_tiny_run(
        tmp_path_factory, MethodConfig(method="mle", rank=2, temperature=True), max_test=4
    )
    with pytest.raises(ValueError, match="not on a continuation's likelihood"):
        ScalaBLLM(run=str(tempered))


def test_majority_generation_runs_each_sample(scalabl_run):
    _, out = scalabl_run
    lm = ScalaBLLM(run=str(out), n_samples=3, generation="majority", batch_size=2)
    gen = _requests("generate_until", [(c, {"until": ["\n"], "max_gen_toks": 4}) for c in CONTEXTS])
    texts = lm.generate_until(gen, disable_tqdm=True)
    assert len(texts) == len(CONTEXTS) and all(isinstance(t, str) and "\n" not in t for t in texts)


def _local_task(folder) -> Path:
    """A harness task folder: multiple choice on six ARC-Easy questions of the offline copy, read by
    the harness from a local JSON file (``dataset_path: json``)."""
    data = folder / "arc.jsonl"
    rows = [
        {"question": e.question, "choices": list(e.choices), "label": e.label}
        for e in get_task("arc_easy").offline()[:6]
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tasks = folder / "tasks"
    tasks.mkdir()
    (tasks / "arc_local.yaml").write_text(
        "task: arc_easy_local\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{label}}"\n'
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"
    )
    return tasks


def test_a_local_harness_task_runs_end_to_end(scalabl_run, tmp_path):
    """``simple_evaluate(model="scalabl")``: the harness builds the model from its arguments, makes
    its requests and computes its metrics."""
    _, out = scalabl_run
    manager = TaskManager(include_path=str(_local_task(tmp_path)), include_defaults=False)
    results = simple_evaluate(
        model="scalabl", model_args=f"run={out},n_samples=2", tasks=["arc_easy_local"], task_manager=manager
    )
    metrics = results["results"]["arc_easy_local"]
    assert 0.0 <= metrics["acc,none"] <= 1.0 and 0.0 <= metrics["acc_norm,none"] <= 1.0
    requests = results["samples"]["arc_easy_local"]
    assert len(requests) == 6 and all(len(r["resps"]) == len(r["doc"]["choices"]) for r in requests)


@pytest.mark.slow
def test_the_harness_command_line_runs_a_local_task(scalabl_run, tmp_path):
    """``scalabl-lm-eval --model scalabl ...``: the harness's own command line (slow: it indexes all of
    the harness's tasks first)."""
    _, out = scalabl_run
    tasks = _local_task(tmp_path)
    results = tmp_path / "results"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [
        sys.executable,
        "-c",
        "from scalabl.harness_cli import main; main()",
        "--model",
        "scalabl",
        "--model_args",
        f"run={out},n_samples=2",
        "--tasks",
        "arc_easy_local",
        "--include_path",
        str(tasks),
        "--output_path",
        str(results),
        "--device",
        "cpu",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (found,) = results.rglob("results_*.json")
    metrics = json.loads(found.read_text())["results"]["arc_easy_local"]
    assert 0.0 <= metrics["acc,none"] <= 1.0 and 0.0 <= metrics["acc_norm,none"] <= 1.0
    assert "scalabl" in json.loads(found.read_text())["config"]["model"]
