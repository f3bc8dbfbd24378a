"""Multi-query associative recall (MQAR; Arora et al., 2023, "Zoology"), scaled down.

A sequence first lists ``n_pairs`` key-value pairs ``k_1 v_1 k_2 v_2 ...`` (keys drawn without
replacement from the lower half of the vocabulary, values from the upper half), then, at random
positions of the rest of the sequence, every key appears again followed by its value. Everything else
is the padding token 0. The model reads the sequence left to right and is scored only where it sees a
repeated key: there it must predict the value that followed the key in the first part. A model whose
memory of the past is a fixed-size state (an SSM) must hold all ``n_pairs`` associations in it; attention
can look them up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from paperlab.config import check_ints
from paperlab.train import seeded_batches, train
from paperlab.utils import cpu_threads

IGNORE = -100
# nats: the smallest fall of MQAR's validation loss over the last fifth of training that counts in the
# convergence check; the loss of a model that has solved the task tends to 0 and keeps halving there
MQAR_LOSS_FLOOR = 1e-3


def check_mqar(seq_len: int, n_pairs: int, vocab_size: int) -> None:
    """A ValueError unless ``n_pairs`` pairs and their queries fit in ``seq_len`` tokens and the keys in the
    lower half of the vocabulary (ids ``1 .. vocab_size // 2 - 1``; 0 is padding)."""
    if not isinstance(n_pairs, int) or isinstance(n_pairs, bool) or n_pairs < 1:
        raise ValueError(f"n_pairs must be a positive integer, got {n_pairs!r}")
    if 4 * n_pairs > seq_len + 1:
        raise ValueError(f"n_pairs = {n_pairs} needs seq_len >= 4 * n_pairs - 1 = {4 * n_pairs - 1}, "
                         f"got {seq_len}")
    half = vocab_size // 2
    if n_pairs > half - 1:
        raise ValueError(f"n_pairs = {n_pairs} keys do not fit in vocab_size // 2 - 1 = {half - 1} key ids")


@dataclass(frozen=True)
class MQARTask:
    """The recall task's data, shared by the chapters that train on it (the SSD chapter's
    ``MQARConfig``, the MatMul-free chapter's ``MQARSettings`` extend it with their models): sequences of
    ``seq_len`` tokens holding ``n_pairs`` pairs over ``vocab_size`` tokens; a validation set of ``n_val``
    sequences from ``val_seed`` and a test set of ``n_test`` from ``test_seed``."""

    seq_len: int = 16
    n_pairs: int = 4
    vocab_size: int = 64
    n_val: int = 256
    val_seed: int = 54321
    n_test: int = 1024
    test_seed: int = 12345

    def __post_init__(self):
        check_ints(self, "seq_len", "n_pairs", "vocab_size", "n_val", "n_test")
        check_ints(self, "val_seed", "test_seed", low=0)
        try:
            check_mqar(self.seq_len, self.n_pairs, self.vocab_size)
        except ValueError as err:
            raise ValueError(f"{type(self).__name__}: {err}") from None

    def val_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``n_val`` validation sequences (``inputs, targets``), drawn from ``val_seed``."""
        return mqar_batch(self.n_val, self.seq_len, self.n_pairs, self.vocab_size,
                          torch.Generator().manual_seed(self.val_seed))

    def test_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``n_test`` test sequences (``inputs, targets``), drawn from ``test_seed``."""
        return mqar_batch(self.n_test, self.seq_len, self.n_pairs, self.vocab_size,
                          torch.Generator().manual_seed(self.test_seed))


def mqar_batch(batch: int, seq_len: int, n_pairs: int, vocab_size: int,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, targets)``, both ``(batch, seq_len)`` int64; targets are ``IGNORE`` except at the
    positions of repeated keys, where they hold the key's value (next-token prediction)."""
    check_mqar(seq_len, n_pairs, vocab_size)
    half = vocab_size // 2
    keys = torch.rand(batch, half - 1, generator=generator).argsort(-1)[:, :n_pairs] + 1  # ids 1 .. half-1
    values = torch.randint(half, vocab_size, (batch, n_pairs), generator=generator)
    inputs = torch.zeros(batch, seq_len + 1, dtype=torch.long)
    inputs[:, 0:2 * n_pairs:2] = keys
    inputs[:, 1:2 * n_pairs:2] = values
    # queries: n_pairs non-overlapping (key, value) slots among the remaining positions
    free = seq_len + 1 - 2 * n_pairs
    n_slots = free // 2
    slots = torch.rand(batch, n_slots, generator=generator).argsort(-1)[:, :n_pairs]  # which slots
    order = torch.rand(batch, n_pairs, generator=generator).argsort(-1)  # which key goes where
    positions = 2 * n_pairs + 2 * slots
    rows = torch.arange(batch)[:, None]
    inputs[rows, positions] = keys.gather(1, order)
    inputs[rows, positions + 1] = values.gather(1, order)
    targets = torch.full((batch, seq_len), IGNORE, dtype=torch.long)
    targets[rows, positions] = values.gather(1, order)
    return inputs[:, :-1], targets


@torch.no_grad()
def mqar_scores(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                batch_size: int = 256) -> dict[str, float]:
    """``{"accuracy", "loss"}`` over the query positions: the fraction where the model's most likely next
    token is the right value, and the mean cross-entropy of the right value (nats)."""
    correct = total = 0
    nats = 0.0
    device = next(model.parameters()).device
    for start in range(0, len(inputs), batch_size):
        x = inputs[start:start + batch_size].to(device)
        y = targets[start:start + batch_size].to(device)
        mask = y != IGNORE
        logits = model(x)[mask].float()
        correct += int((logits.argmax(-1) == y[mask]).sum())
        nats += float(torch.nn.functional.cross_entropy(logits, y[mask], reduction="sum"))
        total += int(mask.sum())
    return {"accuracy": correct / max(total, 1), "loss": nats / max(total, 1)}


def mqar_accuracy(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                  batch_size: int = 256) -> float:
    """Fraction of query positions where the model's most likely next token is the right value."""
    return mqar_scores(model, inputs, targets, batch_size)["accuracy"]


def train_mqar(make_model: Callable[[], torch.nn.Module], task: MQARTask, train_config, device,
               desc: str = "MQAR"):
    """Build a model with ``make_model()`` from ``train_config.seed`` and train it on MQAR batches drawn
    from that seed, on ``device`` with one CPU thread, scoring the validation set (``val_accuracy``,
    ``val_loss``) every ``train_config.eval_every`` steps; then the test set once. ``task`` is an
    :class:`MQARTask` (or extends it). Returns ``(model, result, test_accuracy)``, ``result``
    a :class:`paperlab.train.TrainResult`."""
    val, test = task.val_set(), task.test_set()
    torch.manual_seed(train_config.seed)
    model = make_model().to(device)
    get_batch = seeded_batches(lambda g: mqar_batch(train_config.batch_size, task.seq_len, task.n_pairs,
                                                    task.vocab_size, g), train_config.seed)
    with cpu_threads(1, device=device):  # tiny models: one thread is faster than two busy cores
        result = train(model, get_batch, lambda m, batch: m.loss(*batch), train_config, device=device,
                       desc=desc, eval_fn=lambda m: {f"val_{k}": v for k, v in mqar_scores(m, *val).items()})
        model.eval()
        test_accuracy = mqar_scores(model, *test)["accuracy"]
    return model, result, test_accuracy
