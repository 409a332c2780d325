"""The training loop: sample biographies, take AdamW steps, probe every fact on the plan.

Read top to bottom: ``train`` builds the world, the model and the store, then alternates
evaluations (on the plan's steps) and training steps. Per-step losses stay on the device
and reach the store in blocks, so the loop never waits on the host between evaluations.
"""

from __future__ import annotations

import copy
import math
import signal
import sys
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

import logstore
from logstore.schema import ATTR_CONDITION_LABEL, ATTR_CONDITIONS, ATTR_STAGES, STORE_NAME
from trainer import checkpoints, references
from trainer.batches import Batch, Biographies, trim_padding
from trainer.config import Config
from trainer.model import Transformer
from trainer.patching import PatchedModel
from trainer.plan import EvalPlan, build_plan
from trainer.probes import FactMetrics, attention_signatures, fact_metrics
from trainer.sampling import Sampler, build_stages
from trainer.world import World, build_world

LOSS_BLOCK = 100  # training steps between transfers of per-step losses to the host


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class Summary:
    steps: int
    final_loss: float
    final_accuracy: float
    wall_s: float
    status: str
    # Wall seconds by part: setup (world, model, store), first_step (compilation included),
    # evaluations (probes, handing rows to the store), checkpoints (weights and resume states).
    timings: dict[str, float] = field(default_factory=dict)


def learning_rate(config: Config, step: int) -> float:
    """Cosine decay from ``lr`` to ``lr * min_lr_ratio`` (after an optional linear warm-up), or constant."""
    t = config.train
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    if t.lr_schedule == "constant":
        return t.lr
    progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
    return t.lr * (t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model: torch.nn.Module, config: Config, fused: bool = False) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not on norms or embeddings of positions)."""
    return optimizer_for(model.named_parameters(), config, fused)


def optimizer_for(named: Iterable[tuple[str, torch.Tensor]], config: Config, fused: bool = False,
                  run_dims: int = 0) -> torch.optim.AdamW:
    """``make_optimizer`` for named parameters whose first ``run_dims`` dimensions index runs (a pack's)."""
    decay, other = [], []
    for n, p in named:
        (decay if p.dim() - run_dims >= 2 and not n.startswith("pos.") else other).append(p)
    t = config.train
    return torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay}, {"params": other, "weight_decay": 0.0}],
                             lr=t.lr, betas=(t.beta1, t.beta2), fused=fused or None)


def compiles(setting: str, device: torch.device) -> bool:
    """Whether ``train.compile`` (auto | on | off) compiles on ``device``."""
    return setting == "on" or (setting == "auto" and device.type == "cuda")


def compiled_or_eager(fn, **options):
    """``torch.compile(fn)``; if the compiler fails, one line on stderr and ``fn`` itself from then
    on (a compiler bug must not cost the run)."""
    compiled = torch.compile(fn, **options)
    failed = False

    def call(*args):
        nonlocal failed
        if not failed:
            try:
                return compiled(*args)
            except torch._dynamo.exc.BackendCompilerFailed as err:
                print(f"torch.compile failed ({type(err).__name__}: {str(err).splitlines()[0]}); "
                      "running eagerly (train.compile = \"off\" skips compilation)", file=sys.stderr)
                failed = True
        return fn(*args)

    return call


def probe_dtype(device: torch.device) -> torch.dtype:
    """The probes' precision: bfloat16 on CUDA (like the training step's matrix products), else float32."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def as_configured(token_loss, config: Config, device: torch.device, pad: int):
    """``token_loss(tokens)`` as the training step runs it: compiled (with CUDA graphs) where
    ``train.compile`` says so, else eager; eager on CPU without the columns that are padding
    in every row."""
    use_cuda = device.type == "cuda"
    if use_cuda:
        torch.backends.cuda.matmul.allow_tf32 = True  # the few fp32 matmuls outside autocast
    if compiles(config.train.compile, device):
        return compiled_or_eager(token_loss, mode="reduce-overhead" if use_cuda and config.train.cuda_graphs else None)
    if use_cuda:
        return token_loss
    return lambda tokens: token_loss(trim_padding(tokens, pad))


def make_train_step(model: Transformer, optimizer: torch.optim.Optimizer, config: Config, device: torch.device,
                    pad: int):
    """One optimiser update on a batch of tokens; returns the mean token loss as a device tensor.

    On CUDA: bf16 autocast, and ``torch.compile`` of forward, loss and backward (``train.compile``),
    with CUDA graphs when ``train.cuda_graphs`` is on; on CPU: fp32, eager unless
    ``train.compile = "on"``. Padding positions carry no loss (and an eager CPU step does not
    compute the padding columns at the batch's end).
    """
    use_cuda = device.type == "cuda"

    def token_loss(tokens: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_cuda):
            logits = model(tokens[:, :-1])
        return F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten(), ignore_index=pad)

    t = config.train
    loss_of = as_configured(token_loss, config, device, pad)

    def train_step(tokens: torch.Tensor) -> torch.Tensor:
        loss = loss_of(tokens)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if t.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        optimizer.step()
        return loss.detach().clone()  # a copy: CUDA graphs reuse their output buffers

    return train_step


class Evaluator:
    """Probes the plan's individuals on their fixed evaluation text, in large batches.

    Each evaluation reads its individuals in order of text length, and each batch only up to
    its longest biography: the fixed text's lengths are known from the start, so this costs no
    wait on the device, and a batch computes few padding positions (the paper preset's
    evaluation texts average 65 tokens, its ``seq_len`` is 111).

    ``dtype`` bfloat16 (the loop's choice on CUDA) probes a bf16 copy of the network, norms
    and residual stream included: autocast would keep those in float32 and cast every layer's
    input, and in eager mode that traffic took more GPU time than the matrix products
    (docs/trainer.md).
    """

    def __init__(self, world: World, bios: Biographies, plan: EvalPlan, batch_size: int, n_attention: int, seed: int,
                 dtype: torch.dtype = torch.float32):
        self.bios, self.plan, self.batch_size, self.dtype = bios, plan, batch_size, dtype
        self.copy, self.copy_of = None, None  # the network in ``dtype``, and the one it copies
        self.order = torch.as_tensor(plan.order, device=bios.device)
        self.templates, self.sentence_order = bios.eval_layout(self.order, seed)
        every = torch.arange(len(self.order), device=bios.device).split(batch_size)
        self.length = torch.cat([  # tokens of each individual's evaluation text, in store order
            (self.text(rows).tokens != bios.pad).sum(1) for rows in every]).cpu().numpy()
        self.by_length: dict[int, tuple[np.ndarray, torch.Tensor]] = {}  # rows of the first n, shortest text first
        trained = torch.as_tensor(world.ids("train")[:n_attention], device=bios.device)
        batch = bios.assemble(trained, *bios.eval_layout(trained, seed))
        self.attention_batch = Batch(trim_padding(batch.tokens, bios.pad), batch.value_pos, batch.name_pos)

    def text(self, rows: torch.Tensor) -> Batch:
        """The evaluation text of the individuals at store rows ``rows``."""
        return self.bios.assemble(self.order[rows], self.templates[rows], self.sentence_order[rows])

    def rows_by_length(self, n: int) -> tuple[np.ndarray, torch.Tensor]:
        """The first ``n`` store rows, shortest text first (on the host, and on the device)."""
        if n not in self.by_length:
            rows = np.argsort(self.length[:n], kind="stable")
            self.by_length[n] = rows, torch.as_tensor(rows, device=self.bios.device)
        return self.by_length[n]

    def probed(self, net: torch.nn.Module) -> torch.nn.Module:
        """``net`` itself, or its copy in ``dtype`` (a patched run's reference included), made
        once and refreshed with ``net``'s current weights at every evaluation."""
        if self.dtype == torch.float32:
            return net
        if self.copy_of is not net:  # the first evaluation, or patching has started
            self.copy = copy.deepcopy(net).to(self.dtype)
            if isinstance(self.copy, PatchedModel):  # the reference is held outside the module tree
                self.copy.reference.to(self.dtype)
            self.copy_of = net
        with torch.no_grad():
            for mine, theirs in zip(self.copy.state_dict().values(), net.state_dict().values()):
                mine.copy_(theirs)
        return self.copy

    def batches(self, i: int) -> tuple[np.ndarray, Iterator[Batch]]:
        """Evaluation ``i``'s store rows, shortest text first, and their text in batches of
        ``batch_size`` in that order, each cut after its longest biography."""
        rows, on_device = self.rows_by_length(len(self.plan.individuals_at(i)))

        def batch(start: int) -> Batch:
            end = min(len(rows), start + self.batch_size)
            text = self.text(on_device[start:end])
            longest = int(self.length[rows[end - 1]])  # the batch's last text is its longest
            return Batch(text.tokens[:, :longest], text.value_pos, text.name_pos)

        return rows, map(batch, range(0, len(rows), self.batch_size))

    def row(self, rows: np.ndarray, parts: list[FactMetrics], attention: dict[str, np.ndarray],
            exposures: torch.Tensor) -> dict[str, np.ndarray]:
        """The store's row of one evaluation: the metrics of ``batches``' batches (``parts``, in
        order) at their ``rows``, missing for individuals not evaluated, and the attention signatures."""
        n_all, n_attr = len(self.plan.order), self.templates.shape[1]
        out = dict(attention)
        for key in (f.name for f in fields(FactMetrics)):
            found = torch.cat([getattr(part, key) for part in parts]).cpu().numpy()
            out[key] = np.full((n_all, n_attr), False if found.dtype == bool else np.nan, found.dtype)
            out[key][rows] = found
        out["exposures"] = exposures[self.order].cpu().numpy()
        return out

    def __call__(self, model: Transformer, i: int, exposures: torch.Tensor) -> dict[str, np.ndarray]:
        net = self.probed(model)
        rows, batches = self.batches(i)
        # Results stay on the device until the evaluation is done: no transfer (and wait) per batch.
        parts = [fact_metrics(net, batch) for batch in batches]
        return self.row(rows, parts, attention_signatures(net, self.attention_batch), exposures)


def close_failed(writer: logstore.RunWriter, err: BaseException, step: int, reason: str = "") -> None:
    """Close the store as failed, saying why (by default what ``err`` says); if the store cannot be
    closed either (the disk that failed the run), ``err`` stays the error that is raised, with a note."""
    try:
        writer.close(status="failed", reason=reason or (
            str(err) if isinstance(err, Diverged) else f"{type(err).__name__} at step {step}: {err}"))
    except logstore.StoreError as store_err:
        if str(store_err) != str(err):
            err.add_note(f"while closing the store: {store_err}")


def leave_resumable(writers: list[logstore.RunWriter], step: int, save, interrupted: BaseException) -> None:
    """After Ctrl-C: ``save()`` (commit the losses so far and write the resume states), then close
    every store as interrupted; if saving fails (a full disk, a diverged last block), the runs
    failed, and that error is raised."""
    try:
        save()
    except BaseException as failed:
        for writer in writers:
            close_failed(writer, failed, step)
        raise
    for writer in writers:
        close_failed(writer, interrupted, step, f"interrupted at step {step}; continue with --resume")


class Run:
    """One run's pieces, built as ``train`` builds them: world, biographies, sampler, plan, model
    (and a patched run's reference), optimiser, generator, evaluator, checkpoints and store, from
    its resume state when ``resume``. A pack (trainer/pack.py) builds one for each member."""

    def __init__(self, config: Config, out: Path, device: torch.device, resume: bool = False):
        self.config, self.out, self.device = config, out, device
        torch.manual_seed(config.seed)
        self.world = world = build_world(config.world, config.seed)
        self.bios = Biographies(world, device)
        self.sampler = Sampler(build_stages(config.sampling, world, config.train.steps, config.train.batch_size),
                               world.n, device)
        self.plan = plan = build_plan(config.eval, world, config.train.steps, config.seed)
        self.model = Transformer(config.model, len(world.vocab), world.seq_len).to(device)
        if config.train.init_from:
            checkpoints.load_weights(self.model, references.weights_file(config.train.init_from, -1, "train.init_from"),
                                     "train.init_from")
        self.reference = None
        if config.patch.reference:  # built after the model, so the model's initial parameters are its twin's
            self.reference = Transformer(config.model, len(world.vocab), world.seq_len).to(device)
            checkpoints.load_weights(self.reference, references.weights_file(
                config.patch.reference, config.patch.reference_step, "patch.reference_step"), "patch.reference_step")
        self.optimizer = make_optimizer(self.model, config, fused=device.type == "cuda")
        self.generator = torch.Generator(device).manual_seed(config.seed)
        self.evaluate = Evaluator(world, self.bios, plan, config.eval.batch_size, config.eval.attention_probe,
                                  config.seed, dtype=probe_dtype(device))
        self.ckpt_dir = out / "checkpoints"
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        self.keep_weights = checkpoints.checkpoint_steps(config.train.steps, config.train.n_checkpoints)
        self.step, self.elapsed = 0, 0.0
        if resume:
            self.step, self.elapsed = checkpoints.load_resume(self.ckpt_dir, self.model, self.optimizer,
                                                              self.generator, self.sampler.exposures)
            self.writer = logstore.RunWriter.resume(out / STORE_NAME, after_step=self.step)
        else:
            from trainer import __version__

            self.writer = logstore.RunWriter.create(
                out / STORE_NAME, individual=plan.order, split=world.split[plan.order], rank=world.rank[plan.order],
                baseline=world.baseline, chance_accuracy=world.chance_accuracy, n_layers=self.model.n_layers,
                n_heads=self.model.n_heads,
                config=config.to_dict(), package_version=__version__, attributes={  # what the trainer did
                    ATTR_STAGES: [st.describe() for st in self.sampler.stages], ATTR_CONDITIONS: config.conditions(),
                    ATTR_CONDITION_LABEL: config.condition_label()})
        self.first_step = self.step
        self.last = {"loss": float("nan"), "accuracy": float("nan")}
        self.eval_index = {int(s): i for i, s in enumerate(plan.steps)}
        self.train_ids = world.split[plan.order] == "train"

    def network(self, at: int) -> torch.nn.Module:
        """What trains and is probed at step ``at``: the model, patched from ``patch.start`` on."""
        if self.reference is not None and at >= self.config.patch.start:
            return PatchedModel(self.model, self.reference)
        return self.model

    def batch(self, step: int) -> torch.Tensor:
        """The tokens (B, seq_len) of training step ``step``, from the run's own generator."""
        individuals = self.sampler.sample(step, self.config.train.batch_size, self.generator)
        return self.bios.assemble(individuals, *self.bios.random_layout(individuals, self.generator)).tokens

    def record_losses(self, first: int, values: np.ndarray, lrs: list[float]) -> Diverged | None:
        """Hand the losses of train steps ``first``, ``first + 1``, ... to the store; the
        divergence they show, if any (the run fails with it)."""
        self.writer.append_train(train_step=np.arange(first, first + len(values), dtype=np.int64),
                                 train_loss=values.astype(np.float32), lr=np.asarray(lrs, np.float32))
        self.last["loss"] = float(values[-1])
        bad = np.flatnonzero(~np.isfinite(values))
        return Diverged(f"training loss became {values[bad[0]]} at step {first + bad[0]}") if len(bad) else None

    def evaluates(self, step: int) -> bool:
        return step in self.eval_index and (self.writer.last_step is None or step > self.writer.last_step)

    def check_weights(self, s: int) -> None:
        """A diverged model is never evaluated: not after a non-finite loss, nor after an update
        that made the weights non-finite (the loss of step s is that of the weights before its update)."""
        if not torch.stack([p.isfinite().all() for p in self.model.parameters()]).all():
            raise Diverged(f"the weights became non-finite in the update of step {s} (its loss was "
                           f"{self.last['loss']:.4g})" if s > self.first_step else
                           f"the weights are not finite at step {s}, before any update")

    def probe(self, s: int, net: torch.nn.Module) -> None:
        """Evaluate ``net`` on the plan's individuals of step ``s`` into the store."""
        self.model.eval()
        row = self.evaluate(net, self.eval_index[s], self.sampler.exposures)
        self.model.train()
        self.record_eval(s, row)

    def record_eval(self, s: int, row: dict[str, np.ndarray]) -> None:
        """Hand the evaluation of step ``s`` (``Evaluator``'s row) to the store."""
        self.writer.append_eval(s, **row)
        known = row["loss"][self.train_ids]
        mask = ~np.isnan(known)
        self.last["accuracy"] = float(row["correct"][self.train_ids][mask].mean()) if mask.any() else float("nan")

    def save_resume(self, step: int, elapsed: float) -> None:
        self.writer.flush()
        checkpoints.save_resume(self.ckpt_dir, step, self.model, self.optimizer, self.generator,
                                self.sampler.exposures, elapsed)

    def summary(self, step: int, wall_s: float, status: str, timings: dict[str, float]) -> Summary:
        return Summary(step, self.last["loss"], self.last["accuracy"], wall_s, status, dict(timings))


class LossBlock:
    """Per-step training losses of ``width`` runs trained together (one, or a pack's members),
    kept on the device and handed to their stores in blocks of at most LOSS_BLOCK steps."""

    def __init__(self, width: int, device: torch.device, start: int):
        self.values = torch.zeros(LOSS_BLOCK, width, device=device)
        self.start = start  # first train step (1-based, after its update) held
        self.lrs: list[float] = []

    def put(self, step: int, losses: torch.Tensor, lr: float) -> None:
        """The loss (or losses, one per run) of the update of 0-based step ``step``."""
        self.values[step - self.start] = losses
        self.lrs.append(lr)

    def full(self, step: int) -> bool:
        return step - self.start == LOSS_BLOCK

    def flush(self, upto: int, runs: list[Run]) -> dict[int, Diverged]:
        """Hand the steps before ``upto`` to the runs' stores; the runs (by position) that diverged."""
        k = upto - self.start
        if k <= 0:
            return {}
        values = self.values[:k].cpu().numpy()
        diverged = {i: err for i, run in enumerate(runs)
                    if (err := run.record_losses(self.start + 1, values[:, i], self.lrs)) is not None}
        self.start, self.lrs = upto, []
        return diverged


def stop_on_ctrl_c() -> tuple[threading.Event, object]:
    """Ctrl-C honoured between steps, so a resume state is always that of a whole step: the event
    it sets, and the handler it replaced (None off the main thread, where signals cannot be caught)."""
    interrupted = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        return interrupted, None
    return interrupted, signal.signal(signal.SIGINT, lambda *_: interrupted.set())


@contextmanager
def timer(timings: dict[str, float], part: str):
    started = time.perf_counter()
    yield
    timings[part] += time.perf_counter() - started


def train(config: Config, out: Path, device: torch.device, resume: bool = False, progress: bool = True) -> Summary:
    """Train one run into ``out`` (config.toml, the store, checkpoints/); ``resume``: continue
    from the resume state in checkpoints/ (trainer/run.py decides when)."""
    setup_started = time.perf_counter()
    run = Run(config, out, device, resume)
    model, step = run.model, run.step
    net = run.network(step)
    optimizer = run.optimizer
    train_step = make_train_step(net, optimizer, config, device, run.bios.pad)
    block = LossBlock(1, device, step)

    def flush_losses(upto: int) -> None:
        diverged = block.flush(upto, [run])
        if diverged:
            raise diverged[0]

    timings: dict[str, float] = defaultdict(float)
    timings["setup"] = time.perf_counter() - setup_started
    start_time = setup_started - run.elapsed  # the run's wall time counts its setup (and earlier segments')
    last_resume_save = time.perf_counter()
    bar = tqdm(total=config.train.steps, initial=step, disable=not progress, unit="step", dynamic_ncols=True,
               desc=out.name)
    status = "failed"
    interrupted, previous_handler = stop_on_ctrl_c()
    try:
        while True:
            if interrupted.is_set():
                raise KeyboardInterrupt
            if net is model and run.network(step) is not model:  # patching starts: a fresh optimiser state
                net = run.network(step)
                optimizer = run.optimizer = make_optimizer(model, config, fused=device.type == "cuda")
                train_step = make_train_step(net, optimizer, config, device, run.bios.pad)
            if run.evaluates(step):
                flush_losses(step)
                run.check_weights(step)
                with timer(timings, "evaluations"):
                    run.probe(step, net)
                bar.set_postfix(loss=f"{run.last['loss']:.3f}", acc=f"{run.last['accuracy']:.3f}", refresh=False)
            if step in run.keep_weights:
                with timer(timings, "checkpoints"):
                    checkpoints.save_weights(model, checkpoints.weights_path(run.ckpt_dir, step), step)
            if step == config.train.steps:
                break
            if time.perf_counter() - last_resume_save > config.train.checkpoint_every_s:
                flush_losses(step)
                with timer(timings, "checkpoints"):
                    run.save_resume(step, time.perf_counter() - start_time)
                last_resume_save = time.perf_counter()
            lr = learning_rate(config, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            tokens = run.batch(step)
            if step == run.first_step:
                with timer(timings, "first_step"):
                    block.put(step, train_step(tokens), lr)
                    block.values[0].item()  # wait for it: compilation and the first update
            else:
                block.put(step, train_step(tokens), lr)
            step += 1
            bar.update(1)
            if block.full(step):
                flush_losses(step)
                bar.set_postfix(loss=f"{run.last['loss']:.3f}", acc=f"{run.last['accuracy']:.3f}", refresh=False)
        flush_losses(step)
        checkpoints.save_weights(model, run.ckpt_dir / checkpoints.FINAL, step)
        status = "complete"
        run.writer.close(status="complete")
    except KeyboardInterrupt as err:
        def save() -> None:
            flush_losses(step)
            run.save_resume(step, time.perf_counter() - start_time)

        leave_resumable([run.writer], step, save, err)
        raise
    except BaseException as err:
        close_failed(run.writer, err, step)
        raise
    finally:
        bar.close()
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)
    return run.summary(step, time.perf_counter() - start_time, status, timings)
