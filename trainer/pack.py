"""Packs: K runs of one shape trained as one stacked model, each still an ordinary run.

A pack's members agree on what one training step does (model sizes, batch size, steps, the
optimiser and its schedule: ``compatible``); their seeds, sampling, population and evaluation
may differ. Each member is a ``loop.Run`` (its own world, sampler, generator, plan, store and
checkpoints, built as ``train`` builds them); their parameters live in stacked tensors with a
leading run dimension, and each member's solo Transformer holds views of its slice, so it is
checked and saved exactly as a solo run's model (and probed as one, on the CPU; on CUDA the
members that evaluate at a step are probed together, trainer/pack_probes.py). One step runs
every member's batch (K, B, T) through ``pack_logits`` (trainer/pack_model.py: batched matrix
products), one backward and one AdamW update (elementwise, so one over stacked tensors equals K
separate ones), with gradient clipping per member. Vocabularies and ``seq_len`` differ between
seeds (a world's value sets are drawn from its seed): the stacked embeddings are padded with
zero rows that the step masks out of the softmax, so they get no gradient and stay zero.
"""

from __future__ import annotations

import math
import signal
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from trainer import checkpoints
from trainer.config import Config, ConfigError
from trainer.loop import (Diverged, LossBlock, Run, Summary, as_configured, close_failed, learning_rate,
                          leave_resumable, make_optimizer, optimizer_for, probe_dtype, stop_on_ctrl_c, timer)
from trainer.pack_model import pack_logits, stack_padded
from trainer.pack_probes import member_rows
from trainer.world import build_world

# What must agree for runs to share one step (the same shapes, batches and updates).
PACKED_KEYS = ("model.n_layers", "model.d_model", "model.n_heads", "model.d_mlp", "train.steps", "train.batch_size",
               "train.lr", "train.lr_schedule", "train.min_lr_ratio", "train.warmup_steps", "train.beta1",
               "train.beta2", "train.weight_decay", "train.grad_clip", "train.compile", "train.cuda_graphs",
               "train.checkpoint_every_s")
MEMORY_SHARE = 0.9  # of the free device memory a pack may plan to use


def pack_key(config: Config) -> tuple:
    """Runs with equal keys can share a pack (a patched run trains alone: it has no key)."""
    flat = config.flat()
    return tuple(flat[k] for k in PACKED_KEYS) if not config.patch.reference else ()


def compatible(configs: list[Config], names: list[str] | None = None) -> str:
    """Why these runs cannot train as one pack, in one line ("" when they can)."""
    names = names or [c.name or f"seed {c.seed}" for c in configs]
    for name, c in zip(names, configs):
        if c.patch.reference:
            return f"{name}: a patched run (patch.reference) trains alone"
    first = configs[0].flat()
    for name, c in zip(names[1:], configs[1:]):
        flat = c.flat()
        for key in PACKED_KEYS:
            if flat[key] != first[key]:
                return f"{key} differs ({first[key]!r} in {names[0]}, {flat[key]!r} in {name}); a pack shares it"
    return ""


# ---------------------------------------------------------------- memory


def param_count(config: Config, vocab: int, seq_len: int) -> int:
    """Parameters of one member's Transformer (embeddings included)."""
    m = config.model
    per_layer = 4 * m.d_model + 4 * m.d_model**2 + 2 * m.d_model * m.d_mlp  # norms, attention, MLP
    return (vocab + seq_len) * m.d_model + m.n_layers * per_layer + 2 * m.d_model


def pack_bytes(config: Config, vocab: int, seq_len: int, k: int, device: torch.device) -> dict[str, int]:
    """Bytes a pack of ``k`` members needs on ``device`` for one step, by part: parameters,
    gradients and AdamW's two moments (float32), and the activations one step keeps for its
    backward (bf16 on CUDA, float32 on CPU): per layer the residual stream, the two norms, q, k, v,
    the attention output and its projection, the MLP's two hidden tensors; the logits in the
    step's precision, in float32, and their gradient."""
    m, b = config.model, config.train.batch_size
    params = k * param_count(config, vocab, seq_len)
    act = 2 if device.type == "cuda" else 4
    positions = k * b * seq_len
    per_layer = positions * (9 * m.d_model + 2 * m.d_mlp)
    logits = positions * vocab * (act + 4 + 4)
    return {"parameters": 4 * params, "gradients": 4 * params, "optimizer": 8 * params,
            "activations": act * m.n_layers * per_layer + logits}


def free_bytes(device: torch.device) -> int:
    """Memory a pack may use on ``device``: free GPU memory, or on CPU the available RAM."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil

    return psutil.virtual_memory().available


def largest_pack(config: Config, vocab: int, seq_len: int, device: torch.device, free: int) -> int:
    """The most members of ``config``'s shape whose step fits in ``MEMORY_SHARE`` of ``free`` bytes."""
    one = sum(pack_bytes(config, vocab, seq_len, 1, device).values())
    return int(MEMORY_SHARE * free // one)


def check_memory(config: Config, k: int, device: torch.device, free: int | None = None) -> None:
    """Refuse, in one line naming the size that fits, a pack of ``k`` that would not fit ``device``."""
    world = build_world(config.world, config.seed)  # its vocabulary and seq_len (a seed's differ by a few)
    vocab, seq_len = len(world.vocab), world.seq_len
    free = free_bytes(device) if free is None else free
    need = sum(pack_bytes(config, vocab, seq_len, k, device).values())
    if need > MEMORY_SHARE * free:
        fits = largest_pack(config, vocab, seq_len, device, free)
        raise ConfigError(f"a pack of {k} runs needs about {need / 2**30:.1f} GiB on {device}, but "
                          f"{free / 2**30:.1f} GiB are free; use a pack of at most {max(fits, 1)}"
                          + (" (one run alone may not fit either)" if fits < 1 else ""))


# ---------------------------------------------------------------- the stacked step


def batched_probes(device: torch.device) -> bool:
    """Whether a pack's members are probed together: on CUDA, where a small model's probes are
    many small kernels; not on the CPU, where the probes are compute-bound and batching them
    measured slower (docs/trainer.md, "Packs")."""
    return device.type == "cuda"


def clip_per_member(params: list[torch.Tensor], max_norm: float) -> None:
    """``clip_grad_norm_`` for each member alone: the norm over its slice of every gradient."""
    grads = [p.grad for p in params]
    norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads])  # (P, K)
    coef = (max_norm / (torch.linalg.vector_norm(norms, dim=0) + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.view(-1, *[1] * (g.dim() - 1)))


def flat_params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


class Pack:
    """The members' parameters stacked, their one optimiser and their one training step."""

    def __init__(self, runs: list[Run], device: torch.device):
        self.device, self.config = device, runs[0].config
        self.pad = runs[0].bios.pad
        params = {n: stack_padded([r.model.get_parameter(n) for r in runs]) for n, _ in runs[0].model.named_parameters()}
        state = [self.member_states(r) for r in runs]
        self.build(runs, params, [[s[j] for s in state] for j in range(len(state[0]))])

    @staticmethod
    def member_states(run: Run) -> list[dict]:
        """A member's AdamW state, parameter by parameter (empty before its first update)."""
        return [run.optimizer.state.get(p, {}) for p in flat_params(run.optimizer)]

    def build(self, runs: list[Run], params: dict[str, torch.Tensor], states: list[list[dict]]) -> None:
        """Stacked ``params`` (K, ...) and the members' optimiser ``states`` (by parameter, then
        member) become the pack's; each member's model and optimiser then work on views of them."""
        self.runs = runs
        self.params = {n: p.requires_grad_() for n, p in params.items()}
        self.optimizer = optimizer_for(self.params.items(), self.config, fused=self.device.type == "cuda", run_dims=1)
        for p, members in zip(flat_params(self.optimizer), states):
            if members[0]:  # resumed: every member is at the same update
                self.optimizer.state[p] = {"step": members[0]["step"], **{
                    key: stack_padded([m[key] for m in members]) for key in ("exp_avg", "exp_avg_sq")}}
        for i, run in enumerate(runs):
            for name, stacked in self.params.items():
                module, _, leaf = name.rpartition(".")
                shape = run.model.get_parameter(name).shape
                setattr(run.model.get_submodule(module), leaf, nn.Parameter(stacked.data[i, : shape[0]], False))
            run.optimizer = make_optimizer(run.model, run.config)  # holds the member's state when it is saved
        vocab = [len(r.world.vocab) for r in runs]
        self.seq_len = max(r.world.seq_len for r in runs)
        self.mask = None  # -inf on the padded vocabulary rows of members with smaller vocabularies
        if min(vocab) < max(vocab):
            rows = torch.arange(max(vocab), device=self.device)
            self.mask = torch.where(rows < torch.tensor(vocab, device=self.device)[:, None], 0.0, -math.inf)
        self.step_fn = self.make_step()

    def make_step(self):
        """One update of every member: (K, B, T) tokens in, (K,) mean token losses out (device tensors)."""
        c, pad, params = self.config, self.pad, self.params
        use_cuda = self.device.type == "cuda"

        def token_losses(tokens: torch.Tensor) -> torch.Tensor:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_cuda):
                logits = pack_logits(params, tokens[..., :-1], c.model.n_layers, c.model.n_heads)
            logits = logits.float()
            if self.mask is not None:
                logits = logits + self.mask[:, None, None]
            targets = tokens[..., 1:]
            each = F.cross_entropy(logits.flatten(0, 2), targets.flatten(), ignore_index=pad, reduction="none")
            return each.view(len(tokens), -1).sum(1) / (targets != pad).flatten(1).sum(1)

        loss_of = as_configured(token_losses, c, self.device, pad)
        stacked = list(params.values())

        def step(tokens: torch.Tensor) -> torch.Tensor:
            losses = loss_of(tokens)
            self.optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            if c.train.grad_clip:
                clip_per_member(stacked, c.train.grad_clip)
            self.optimizer.step()
            return losses.detach().clone()  # a copy: CUDA graphs reuse their output buffers

        return step

    def batches(self, step: int) -> torch.Tensor:
        """Every member's batch of ``step``, padded to the longest ``seq_len``: (K, B, T)."""
        return torch.stack([F.pad(r.batch(step), (0, self.seq_len - r.world.seq_len), value=self.pad) for r in self.runs])

    def probe(self, due: list[int], step: int) -> None:
        """Evaluate members ``due`` (positions) at ``step`` into their stores: on CUDA all of them
        in one forward pass per batch (trainer/pack_probes.py), elsewhere one by one."""
        if not batched_probes(self.device):
            for i in due:
                self.runs[i].probe(step, self.runs[i].model)
            return
        params = self.params if len(due) == len(self.runs) else {
            n: p.detach()[torch.tensor(due, device=self.device)] for n, p in self.params.items()}
        members = [self.runs[i] for i in due]
        for run, row in zip(members, member_rows(params, members, step, probe_dtype(self.device))):
            run.record_eval(step, row)

    def save_resume(self, i: int, step: int, elapsed: float) -> None:
        """Member ``i``'s resume state, in the file and format of a solo run's."""
        run = self.runs[i]
        for p, mine in zip(flat_params(self.optimizer), flat_params(run.optimizer)):
            if p in self.optimizer.state:
                state = self.optimizer.state[p]
                run.optimizer.state[mine] = {"step": state["step"], **{
                    key: state[key][i, : mine.shape[0]] for key in ("exp_avg", "exp_avg_sq")}}
        run.save_resume(step, elapsed)

    def drop(self, gone: set[int]) -> None:
        """Members ``gone`` (positions) stop training: the pack goes on with the others."""
        keep = [i for i in range(len(self.runs)) if i not in gone]
        if not keep:
            self.runs = []
            return
        index = torch.tensor(keep, device=self.device)
        params = {n: p.detach()[index].clone() for n, p in self.params.items()}
        states = []
        for p in flat_params(self.optimizer):
            state = self.optimizer.state.get(p)
            states.append([{"step": state["step"], "exp_avg": state["exp_avg"][i], "exp_avg_sq": state["exp_avg_sq"][i]}
                           if state else {} for i in keep])
        self.build([self.runs[i] for i in keep], params, states)


def start_step(out: Path, resume: bool) -> int:
    return checkpoints.saved_step(out / "checkpoints") if resume else 0


def train_pack(configs: list[Config], outs: list[Path], device: torch.device, resume: list[bool],
               progress: bool = True) -> list[Summary | Diverged]:
    """Train prepared runs into ``outs`` as one pack; each member's result in order: its Summary,
    or the Diverged that failed it (its store marked failed, the others trained on).

    Each member's folder ends as ``train`` leaves a run's: config.toml, store and checkpoints
    (weights, and the resume state on Ctrl-C, SIGTERM or every ``train.checkpoint_every_s``).
    """
    reason = compatible(configs, [o.name for o in outs])
    if reason:
        raise ConfigError(reason)
    steps = {start_step(o, r) for o, r in zip(outs, resume)}
    if len(steps) > 1:
        raise ConfigError(f"the runs resume at different steps ({sorted(steps)}); a pack trains them from one step")
    check_memory(configs[0], len(configs), device)
    setup_started = time.perf_counter()
    runs: list[Run] = []
    try:
        for c, o, r in zip(configs, outs, resume):
            runs.append(Run(c, o, device, r))
    except BaseException as err:  # the members built so far must not stay open
        for run in runs:
            close_failed(run.writer, err, run.step)
        raise
    config, step = configs[0], runs[0].step
    results: dict[int, Summary | Diverged] = {}
    pack = Pack(runs, device)
    members = {id(r): i for i, r in enumerate(runs)}  # a member's position in ``outs``
    timings: dict[str, float] = defaultdict(float)
    timings["setup"] = time.perf_counter() - setup_started
    start_time = setup_started - max(r.elapsed for r in runs)
    block = LossBlock(len(runs), device, step)

    def fail(gone: dict[int, Diverged]) -> None:
        nonlocal block
        for i, err in gone.items():
            close_failed(pack.runs[i].writer, err, step)
            results[members[id(pack.runs[i])]] = err
        pack.drop(set(gone))
        block = LossBlock(len(pack.runs), device, step)

    def flush(upto: int) -> None:
        gone = block.flush(upto, pack.runs)
        if gone:
            fail(gone)

    last_resume_save = time.perf_counter()
    bar = tqdm(total=config.train.steps, initial=step, disable=not progress, unit="step", dynamic_ncols=True,
               desc=f"pack of {len(runs)}")
    interrupted, previous_handler = stop_on_ctrl_c()
    try:
        while pack.runs:
            if interrupted.is_set():
                raise KeyboardInterrupt
            if any(r.evaluates(step) for r in pack.runs):
                flush(step)
                broken, due = {}, []
                for i, run in enumerate(pack.runs):
                    if run.evaluates(step):
                        try:
                            run.check_weights(step)
                            due.append(i)
                        except Diverged as err:
                            broken[i] = err
                if due:
                    with timer(timings, "evaluations"):
                        pack.probe(due, step)
                if broken:
                    fail(broken)
            for run in pack.runs:
                if step in run.keep_weights:
                    with timer(timings, "checkpoints"):
                        checkpoints.save_weights(run.model, checkpoints.weights_path(run.ckpt_dir, step), step)
            if step == config.train.steps or not pack.runs:
                break
            if time.perf_counter() - last_resume_save > config.train.checkpoint_every_s:
                flush(step)
                with timer(timings, "checkpoints"):
                    for i in range(len(pack.runs)):
                        pack.save_resume(i, step, time.perf_counter() - start_time)
                last_resume_save = time.perf_counter()
            lr = learning_rate(config, step)
            for group in pack.optimizer.param_groups:
                group["lr"] = lr
            tokens = pack.batches(step)
            if step == runs[0].first_step:
                with timer(timings, "first_step"):
                    block.put(step, pack.step_fn(tokens), lr)
                    block.values[0].tolist()  # wait for it: compilation and the first update
            else:
                block.put(step, pack.step_fn(tokens), lr)
            step += 1
            bar.update(1)
            if block.full(step):
                flush(step)
        flush(step)
        for run in pack.runs:
            checkpoints.save_weights(run.model, run.ckpt_dir / checkpoints.FINAL, step)
            run.writer.close(status="complete")
            results[members[id(run)]] = run.summary(step, time.perf_counter() - start_time, "complete", timings)
    except KeyboardInterrupt as err:
        def save() -> None:
            flush(step)
            for i in range(len(pack.runs)):
                pack.save_resume(i, step, time.perf_counter() - start_time)

        leave_resumable([run.writer for run in pack.runs], step, save, err)
        raise
    except BaseException as err:
        for run in pack.runs:
            if members[id(run)] not in results:
                close_failed(run.writer, err, step)
        raise
    finally:
        bar.close()
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)
    return [results[i] for i in range(len(runs))]
