"""TRL 1.13's preference losses on given per-token log-probs, the reference of
test/preference-trl-parity.test.ts.

Reads JSON on stdin: {"cases": [...]}, each case a batch of rows, each row
the per-token log-probs of its completion tokens (any number >= 1) and a
prompt length (>= 1, so that position 0 is never a completion token). Per
case kind, TRL's own code computes the loss:

  dpo    DPOTrainer._compute_loss (loss_type sigmoid, robust, hinge, ipo,
         sigmoid_norm), rows = chosen then rejected, reference sums given
         (precompute_ref_logps).
  simpo  CPOTrainer.get_batch_loss_metrics -> cpo_loss (loss_type simpo,
         cpo_alpha 0, alpha 0), average log-probs from CPOTrainer.get_batch_logps.
  orpo   ORPOTrainer.get_batch_loss_metrics -> odds_ratio_loss, average
         log-probs from ORPOTrainer.get_batch_logps.
  kto    KTOTrainer._compute_loss (loss_type kto) with its KL estimate from
         mismatched rows (calculate_KL), reference sums given.

The trainers' `self` is a SimpleNamespace with the attributes these methods
read; the model is a stand-in whose logits make selective_log_softmax return
the given log-probs: a 2-token vocabulary, every target token id 0, and at
the position predicting a completion token with log-prob l the logits
[l - log(1 - e^l), 0], so that log_softmax(.)[0] = l. The log-probs are a
float64 leaf tensor, so autograd gives d loss / d (each token's log-prob)
through TRL's own reductions. Writes per case: the loss, that gradient per
row (completion tokens only), and the trainer's logged metrics.
"""
import json
import os
import sys
import types
from collections import defaultdict

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch  # noqa: E402

from trl.experimental.cpo.cpo_trainer import CPOTrainer  # noqa: E402
from trl.experimental.orpo.orpo_trainer import ORPOTrainer  # noqa: E402
from trl.trainer.dpo_trainer import DPOTrainer  # noqa: E402
from trl.trainer.kto_trainer import KTOTrainer  # noqa: E402

torch.set_grad_enabled(True)
DT = torch.float64


class Accelerator:
    """Single process: gathering is the identity."""

    device = torch.device("cpu")

    def gather_for_metrics(self, x):
        return x

    def gather(self, x):
        return x


def trainer_self(**attrs):
    ns = types.SimpleNamespace(
        accelerator=Accelerator(),
        model=types.SimpleNamespace(training=True),
        _metrics=defaultdict(lambda: defaultdict(list)),
        _total_train_tokens=0,
        _tp_size=1,
        aux_loss_enabled=False,
    )
    for k, v in attrs.items():
        setattr(ns, k, v)
    return ns


def log1mexp(l):
    return torch.where(l < -0.6931471805599453, torch.log1p(-torch.exp(l)), torch.log(-torch.expm1(l)))


class Batch:
    """Rows of completion log-probs laid out as a causal LM batch [rows, T]."""

    def __init__(self, rows, prompts, grad):
        self.n = len(rows)
        self.lens = [len(r) for r in rows]
        self.T = max(p + n for p, n in zip(prompts, self.lens))
        # completion_mask / labels at token positions; the log-prob of token t sits at shifted position t - 1.
        self.completion_mask = torch.zeros(self.n, self.T, dtype=torch.long)
        self.attention_mask = torch.zeros(self.n, self.T, dtype=torch.long)
        self.input_ids = torch.zeros(self.n, self.T, dtype=torch.long)
        lp = torch.full((self.n, self.T - 1), -1.0, dtype=DT)
        for i, (p, r) in enumerate(zip(prompts, rows)):
            self.completion_mask[i, p : p + len(r)] = 1
            self.attention_mask[i, : p + len(r)] = 1
            lp[i, p - 1 : p - 1 + len(r)] = torch.tensor(r, dtype=DT)
        self.prompts = prompts
        self.shift_mask = self.completion_mask[:, 1:].bool()
        self.logps = lp.requires_grad_(grad)
        # Padding after a row's end is not attended; its labels are -100 for the get_batch_logps path.
        self.labels = torch.where(self.completion_mask == 1, self.input_ids, torch.full_like(self.input_ids, -100))

    def logits(self):
        """[rows, T, 2]: position t predicts token t + 1 with log-prob logps[:, t] (where it is a completion token)."""
        l = torch.where(self.shift_mask, self.logps, torch.full_like(self.logps, -1.0))
        first = torch.cat([l - log1mexp(l), torch.zeros(self.n, 1, dtype=DT)], dim=1)  # the last position predicts nothing
        return torch.stack([first, torch.zeros_like(first)], dim=-1)

    def grads(self):
        g = self.logps.grad
        return [g[i, p - 1 : p - 1 + n].tolist() for i, (p, n) in enumerate(zip(self.prompts, self.lens))]


class FakeModel:
    """Returns the logits of whichever batch's input_ids it is called with."""

    def __init__(self, *batches):
        self.by_ptr = {b.input_ids.data_ptr(): b for b in batches}

    def __call__(self, input_ids=None, **kwargs):
        return types.SimpleNamespace(logits=self.by_ptr[input_ids.data_ptr()].logits())


def metrics_of(ns):
    return {k: v[-1] for k, v in ns._metrics["train"].items() if len(v)}


def run_dpo(c):
    b = Batch(c["rows"], c["prompts"], True)
    ns = trainer_self(
        beta=c["beta"],
        label_smoothing=c["label_smoothing"],
        loss_types=[c["loss_type"]],
        loss_weights=[1.0],
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        use_weighting=False,
    )
    inputs = {
        "input_ids": b.input_ids,
        "attention_mask": b.attention_mask,
        "completion_mask": b.completion_mask,
        "ref_chosen_logps": torch.tensor(c["ref_chosen"], dtype=DT),
        "ref_rejected_logps": torch.tensor(c["ref_rejected"], dtype=DT),
    }
    loss = DPOTrainer._compute_loss(ns, FakeModel(b), inputs, False)
    loss.backward()
    return {"loss": loss.item(), "grads": b.grads(), "metrics": metrics_of(ns)}


def pair_batch_metrics(cls, c, **attrs):
    """get_batch_loss_metrics of CPO / ORPO with concatenated_forward replaced by the given log-probs."""
    b = Batch(c["rows"], c["prompts"], True)
    P = b.n // 2
    nll_completion = c.get("nll_completion", False)

    def concatenated_forward(self, model, batch):
        logits = b.logits()
        logps = cls.get_batch_logps(logits, b.labels, average_log_prob=True, is_encoder_decoder=False)
        if nll_completion:
            # TRL's ORPO NLL is a cross entropy over the chosen rows' prompt and
            # completion tokens; the NLL this package uses (and the one compared)
            # is over the chosen completion tokens: their mean -log-prob.
            m = b.shift_mask[:P]
            nll = -(b.logps[:P] * m).sum() / m.sum()
        else:
            nll = torch.tensor(0.0, dtype=DT)
        return logps[:P], logps[P:], logits[:P, :-1, :], logits[P:, :-1, :], nll

    ns = trainer_self(**attrs)
    ns.concatenated_forward = types.MethodType(concatenated_forward, ns)
    for name in ("cpo_loss", "odds_ratio_loss"):
        if hasattr(cls, name):
            setattr(ns, name, types.MethodType(getattr(cls, name), ns))
    loss, metrics = cls.get_batch_loss_metrics(ns, None, {}, "train")
    loss.backward()
    return {"loss": loss.item(), "grads": b.grads(), "metrics": {k: float(v) for k, v in metrics.items()}}


def run_simpo(c):
    return pair_batch_metrics(
        CPOTrainer, c, beta=c["beta"], label_smoothing=c["label_smoothing"], simpo_gamma=c["gamma"], loss_type="simpo", alpha=0.0, cpo_alpha=0.0
    )


def run_orpo(c):
    return pair_batch_metrics(ORPOTrainer, dict(c, nll_completion=True), beta=c["beta"])


def run_kto(c):
    b = Batch(c["rows"], c["prompts"], True)
    kl = Batch(c["kl_rows"], c["kl_prompts"], False)
    ns = trainer_self(
        beta=c["beta"],
        desirable_weight=c["desirable_weight"],
        undesirable_weight=c["undesirable_weight"],
        loss_type="kto",
        calculate_KL=True,
        precompute_ref_logps=True,
        use_liger_kernel=False,
    )
    ns._compute_kl_logps = types.MethodType(KTOTrainer._compute_kl_logps, ns)
    inputs = {
        "label": torch.tensor(c["labels"], dtype=torch.bool),
        "input_ids": b.input_ids,
        "attention_mask": b.attention_mask,
        "completion_mask": b.completion_mask,
        "KL_input_ids": kl.input_ids,
        "KL_attention_mask": kl.attention_mask,
        "KL_completion_mask": kl.completion_mask,
        "ref_logps": torch.tensor(c["ref_logps"], dtype=DT),
        "ref_KL_logps": torch.tensor(c["ref_kl_logps"], dtype=DT),
    }
    loss = KTOTrainer._compute_loss(ns, FakeModel(b, kl), inputs, False)
    loss.backward()
    return {"loss": loss.item(), "grads": b.grads(), "metrics": metrics_of(ns)}


RUN = {"dpo": run_dpo, "simpo": run_simpo, "orpo": run_orpo, "kto": run_kto}
cases = json.load(sys.stdin)["cases"]
json.dump([RUN[c["kind"]](c) for c in cases], sys.stdout)
