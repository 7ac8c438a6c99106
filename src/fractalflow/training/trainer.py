"""The training loop: rectified flow with AdamW, warm-up + cosine, clipping, EMA,
bf16 autocast on CUDA, TensorBoard logging, atomic checkpoints and exact resume, and a health
check on every step (skip, roll back; :mod:`fractalflow.monitoring.health`)."""

from __future__ import annotations

import json
import math
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from fractalflow.config import FractalConfig, TrainConfig
from fractalflow.data.dataset import CaptionedImages
from fractalflow.files import atomic_write_text
from fractalflow.flow.jitter import shift_each
from fractalflow.flow.objective import rectified_flow_loss
from fractalflow.flow.samplers import guided_velocity, sample_euler, time_grid
from fractalflow.hardware import resolve_device
from fractalflow.model.conditioning import Conditioning
from fractalflow.model.flops import forward_flops
from fractalflow.model.text import CaptionTable, TextEncoder
from fractalflow.model.transformer import FractalTransformer
from fractalflow.model.weights import MAX_SHARD_BYTES, load_model, save_model
from fractalflow.monitoring.health import HealthSettings, TrainingHealth
from fractalflow.training.checkpoint import (
    CheckpointError,
    TrainingState,
    checkpoint_folder,
    list_checkpoints,
    load_newest_intact,
    save_checkpoint,
)
from fractalflow.training.curriculum import CurriculumScheduler, parse_curriculum
from fractalflow.training.distributed import Processes
from fractalflow.training.lora import add_lora, save_adapter


def warmup_cosine(warmup_steps: int, total_steps: int, floor: float = 0.05):
    """LR multiplier: linear warm-up, then cosine decay to ``floor``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def ema_with_warmup(decay: float):
    """``multi_avg_fn`` for ``AveragedModel``: an EMA whose decay ramps up as ``(1 + n) / (10 + n)``
    (n = updates so far) to ``decay``, so short runs do not export weights still tied to the
    initialisation (with a fixed 0.999, 2,400 steps leave 9 % of the zero-initialised output)."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = float(num_averaged)
        weight = 1.0 - min(decay, (1.0 + n) / (10.0 + n))
        for average, value in zip(averaged, current):
            average.lerp_(value, weight)

    return update


def kind_weights(dataset: CaptionedImages, kinds: set[str]) -> dict[str, torch.Tensor]:
    """Draw weights restricted to each kind of image ("emoji", "icon") a curriculum stage asks for."""
    if not kinds:
        return {}
    records = getattr(dataset, "records", None)
    if not records:
        raise ValueError(f"a curriculum stage drawing only {sorted(kinds)} images needs an emoji dataset (records)")
    base = dataset.weights if dataset.weights is not None else torch.ones(len(dataset), dtype=torch.float64)
    weights = {}
    for kind in kinds:
        mask = torch.tensor([r.kind == kind for r in records])
        if not mask.any():
            raise ValueError(f"a curriculum stage draws only {kind} images but the dataset has none")
        weights[kind] = base * mask
    return weights


def network_to_train(fresh: FractalConfig, init: str | None, split_mixing: str | None = None) -> FractalConfig:
    """The network a run trains: ``fresh`` from scratch, else the ``init`` folder's (its sizes
    trained at cleared); with ``split_mixing`` where given, which :meth:`Trainer.start_from`
    may add to an ``init`` network without it."""
    config = replace(load_model(init).config, trained_sizes=()) if init else fresh
    return replace(config, split_mixing=split_mixing) if split_mixing else config


def training_flops_per_image(model: torch.nn.Module, image_size: int) -> float:
    """Forward + backward FLOPs for one image (3x the forward)."""
    return 3.0 * forward_flops(model, image_size)


class TrainingDiverged(ValueError):
    """The health check refused step after step and rolling back did not help (or there was
    no checkpoint to roll back to): nothing after that point is worth saving."""


# TrainConfig fields a resumed run must share with its checkpoints (others, such as steps,
# may change between sessions)
RUN_SHAPE_FIELDS = ("image_size", "resolutions", "curriculum", "lora_rank")


class Trainer:
    """Trains a velocity model (a FractalTransformer unless ``model_class`` says otherwise) on a
    captioned dataset and writes checkpoints under ``out_dir``.

    ``out_dir/checkpoints/step_*`` hold resumable states, ``out_dir/model`` the final EMA
    model folder, ``out_dir/logs`` TensorBoard events. All randomness after model
    initialisation (batches, noise, times, condition dropout) comes from one CPU
    generator, except a GPU run's noise, drawn by a generator on the GPU; their states are
    checkpointed, so a resumed run matches an uninterrupted one.

    ``model_class(model_config)`` must build a module with ``forward(x, t, cond, drop)``
    (see :class:`FractalTransformer`); ``model_config`` needs ``in_channels``,
    ``is_class_conditional`` and ``to_dict``. The peer benchmarks train other networks this way.

    Started as several processes (``accelerate launch -m fractalflow.cli train``, ``torchrun``),
    each trains on its slice of the same global batch (:mod:`fractalflow.training.distributed`).
    """

    def __init__(
        self,
        model_config: FractalConfig,
        train_config: TrainConfig,
        dataset: CaptionedImages,
        out_dir: str | Path,
        device: str | torch.device | None = None,
        progress: bool = True,
        text_encoder: TextEncoder | CaptionTable | None = None,
        model_class: type[torch.nn.Module] = FractalTransformer,
        health: HealthSettings | None = None,
    ):
        if not model_config.is_class_conditional and text_encoder is None:
            raise ValueError("a text-conditional model (no class_names) needs a text_encoder to train")
        if model_config.in_channels != dataset.channels:
            raise ValueError(f"model has in_channels={model_config.in_channels} but the data has {dataset.channels}")
        self.config, self.model_config, self.dataset = train_config, model_config, dataset
        self.curriculum = self.kind_weights = None
        if train_config.curriculum:
            stages = parse_curriculum(train_config.curriculum)
            self.curriculum = CurriculumScheduler(stages, train_config.steps, train_config.curriculum_pacing)
            self.kind_weights = kind_weights(dataset, {s.kind for s in stages if s.kind})
        if isinstance(model_config, FractalConfig):
            for size in self.planned_sizes:
                model_config.check_size(size, size)
        self.out_dir = Path(out_dir)
        wanted = resolve_device(device)
        self.processes = Processes.detect(wanted)
        self.device = self.processes.device(wanted)
        self.progress = progress and self.processes.is_main
        self.text_encoder = text_encoder
        torch.manual_seed(train_config.seed)
        self.model = model_class(model_config).to(self.device)
        self.added_layers: list[str] = []  # parameters the init folder lacks (start_from)
        if train_config.init:
            self.start_from(train_config.init)
        if train_config.lora_rank:
            add_lora(self.model, train_config.lora_rank)
        self.ema = AveragedModel(self.model, multi_avg_fn=ema_with_warmup(train_config.ema_decay), use_buffers=True)
        self.network = self.processes.wrap(self.model)  # forward and backward (DDP with several processes)
        decay, no_decay, added = [], [], []
        for name, param in ((n, p) for n, p in self.model.named_parameters() if p.requires_grad):
            (added if name in self.added_layers else decay if param.dim() >= 2 else no_decay).append(param)
        groups = [
            {"params": decay, "weight_decay": train_config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        if added:
            added_lr = train_config.learning_rate * train_config.added_layers_lr_scale
            groups.append({"params": added, "weight_decay": 0.0, "lr": added_lr})
        self.optimizer = torch.optim.AdamW(groups, lr=train_config.learning_rate, betas=(0.9, 0.99))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(train_config.warmup_steps, train_config.steps)
        )
        self.generator = torch.Generator().manual_seed(train_config.seed)
        # a GPU run draws the noise on its device: the lent H100 idled at 30-60 % use while the
        # host drew it (12.6 M normals a step at batch 1,024) and copied it over
        self.noise_generator = self.generator
        if self.device.type != "cpu":
            self.noise_generator = torch.Generator(self.device).manual_seed(train_config.seed)
        self.step = 0
        self.train_seconds = 0.0  # wall-clock of train() so far, summed over resumed runs
        self.last_batch_size = train_config.batch_size
        self.history: list[dict[str, float]] = []  # one entry per log_every steps of train()
        self._writer = None
        self.health = TrainingHealth(health)
        self.lr_scale = 1.0  # lowered by each rollback

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        wanted = self.config.mixed_precision
        if wanted == "bf16" or (wanted == "auto" and self.device.type == "cuda"):
            return torch.bfloat16
        return None

    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / "checkpoints"

    def writer(self):
        """TensorBoard's SummaryWriter on ``out_dir/logs``; where TensorBoard is not installed
        (a bare GPU machine), a :class:`ScalarLog` writing the scalars to ``scalars.jsonl`` there."""
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self._writer = ScalarLog(self.out_dir / "logs" / "scalars.jsonl")
            else:
                self._writer = SummaryWriter(str(self.out_dir / "logs"))
        return self._writer

    def resume(self) -> bool:
        """Load the newest intact checkpoint under ``out_dir`` if there is one; True if resumed.

        Damaged checkpoints (altered files, non-finite weights) are skipped with a line on
        stderr; if every one is damaged, or the run was started with another network or
        image size, this raises :class:`CheckpointError` rather than start afresh.
        """
        if not list_checkpoints(self.checkpoint_dir):
            return False
        state, skipped = load_newest_intact(self.checkpoint_dir)
        for reason in skipped:
            print(f"skipping a damaged checkpoint: {reason}", file=sys.stderr)
        if state is None:
            raise CheckpointError(f"no intact checkpoint in {self.checkpoint_dir} (use another --out to start afresh)")
        self.check_same_run(state.info)
        self.model.load_state_dict(state.model)
        self.ema.load_state_dict(state.ema)
        self.optimizer.load_state_dict(state.optimizer)
        self.scheduler.load_state_dict(state.scheduler)
        self.generator.set_state(state.rng["generator"])
        if "noise" in state.rng and self.noise_generator is not self.generator:
            self.noise_generator.set_state(state.rng["noise"])
        torch.set_rng_state(state.rng["torch"])
        if self.curriculum is not None:
            self.curriculum.load_state_dict(state.info["curriculum"])
        self.train_seconds = state.info.get("train_seconds", 0.0)
        self.step = state.step
        return True

    def start_from(self, folder: str | Path) -> None:
        """Load the weights of the model folder ``folder`` (``default``: the shipped model) in
        place of the fresh initialisation (``TrainConfig.init``), before the adapters, EMA and
        optimizer are made: fine-tuning, or a further schedule for a finished run. The folder
        must hold the same network (sizes trained at aside), or the same without the split mixing
        this run adds (``FractalConfig.split_mixing``, zero-initialised: the output is unchanged)."""
        if str(folder) == "default":
            from fractalflow.pipeline import default_model_folder

            folder = default_model_folder()
        source = load_model(folder, model_class=type(self.model))
        theirs, ours = source.config.to_dict(), self.model_config.to_dict()
        adds_mixing = theirs.get("split_mixing", "none") == "none" != ours.get("split_mixing", "none")
        ignored = {"trained_sizes", "split_mixing"} if adds_mixing else {"trained_sizes"}
        differ = [k for k in ours if k not in ignored and theirs.get(k) != ours[k]]
        if differ:
            raise ValueError(
                f"cannot start from {folder}: its network differs from this run's in {', '.join(sorted(differ))}"
            )
        missing, unexpected = self.model.load_state_dict(source.state_dict(), strict=not adds_mixing)
        if unexpected or any(".mix." not in key for key in missing):
            raise ValueError(f"cannot start from {folder}: weights missing {missing}, unexpected {unexpected}")
        self.added_layers = list(missing)

    def check_same_run(self, info: dict) -> None:
        """Refuse to resume a checkpoint written with another network or image sizes."""
        saved_model = type(self.model_config).from_dict(info["model_config"]).to_dict()
        saved_train = TrainConfig.from_dict(info["train_config"]).to_dict()
        differ = [f"model {k}" for k, v in self.model_config.to_dict().items() if saved_model.get(k) != v]
        differ += [k for k in RUN_SHAPE_FIELDS if saved_train[k] != self.config.to_dict()[k]]
        if differ:
            raise CheckpointError(
                f"the checkpoints in {self.checkpoint_dir} were written with other settings ({', '.join(differ)}); "
                "use the run's settings or another --out"
            )

    def save_checkpoint(self) -> Path:
        """Write a checkpoint (the main process; the others wait for it) and return its folder."""
        rng = {"generator": self.generator.get_state(), "torch": torch.get_rng_state()}
        if self.noise_generator is not self.generator:
            rng["noise"] = self.noise_generator.get_state()
        state = TrainingState(
            step=self.step,
            model=self.model.state_dict(),
            ema=self.ema.state_dict(),
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            rng=rng,
            info={
                "model_config": self.model_config.to_dict(),
                "train_config": self.config.to_dict(),
                "curriculum": None if self.curriculum is None else self.curriculum.state_dict(),
                "train_seconds": self.train_seconds,
            },
        )
        folder = checkpoint_folder(self.checkpoint_dir, self.step)
        if self.processes.is_main:
            folder = save_checkpoint(self.checkpoint_dir, state, self.config.keep_checkpoints)
        self.processes.wait()
        return folder

    def batch_shape(self) -> tuple[int, int]:
        """(image size, batch size) of the next step: one of ``resolutions`` (or the curriculum
        stage's sizes) at random, with the batch scaled so every step sees about the same
        number of pixels (a multiple of the process count)."""
        config = self.config
        resolutions = self.curriculum.stage.sizes if self.curriculum is not None else config.resolutions
        if len(resolutions) <= 1:
            size = (resolutions or (config.image_size,))[0]
        else:
            size = resolutions[int(torch.randint(len(resolutions), (1,), generator=self.generator))]
        return size, self.processes.batch(config.batch_size * (config.image_size / size) ** 2)

    def draw(self, batch: int) -> torch.Tensor:
        """Image indices of the next batch (only the curriculum stage's kind of image, if it names one)."""
        kind = self.curriculum.stage.kind if self.curriculum is not None else ""
        if not kind:
            return self.dataset.draw(batch, self.generator)
        return torch.multinomial(self.kind_weights[kind], batch, replacement=True, generator=self.generator)

    @property
    def timestep_mean(self) -> float:
        stage = self.curriculum.stage if self.curriculum is not None else None
        return self.config.timestep_mean if stage is None or stage.timestep_mean is None else stage.timestep_mean

    def conditioning(
        self, indices: torch.Tensor, fixed_captions: bool = False, rows: slice = slice(None)
    ) -> Conditioning:
        """Class labels, or text features of the images' captions (freshly phrased unless
        ``fixed_captions``), for the ``rows`` of ``indices`` (phrasings drawn for all of them)."""
        if self.model_config.is_class_conditional:
            return self.dataset.conditioning(indices[rows])
        if fixed_captions:
            captions = [self.dataset.captions[i] for i in indices.tolist()]
        else:
            rng = random.Random(int(torch.randint(0, 2**62, (1,), generator=self.generator)))
            captions = self.dataset.sample_captions(indices, rng)
        return self.text_encoder.encode(captions[rows])

    def train_step(self) -> float:
        """One optimizer step on a random batch, unless :class:`TrainingHealth` refuses it
        (then nothing changes but the random state); returns the loss."""
        config = self.config
        size, batch = self.batch_shape()
        indices = self.draw(batch)  # the global batch: the same in every process
        rows = self.processes.shard(batch)
        x0 = self.dataset.pixels(indices[rows], size).to(self.device)
        if config.shift_augment:  # offsets drawn for the global batch, as its indices, then sharded
            amplitude = config.shift_augment
            offsets = torch.randint(-amplitude, amplitude + 1, (batch, 2), generator=self.generator)  # (batch, 2)
            x0 = shift_each(x0, offsets[rows], amplitude, config.shift_fill)
        cond = self.conditioning(indices, rows=rows).to(self.device)
        self.last_batch_size = batch
        dtype = self.autocast_dtype
        with torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = rectified_flow_loss(
                lambda x_t, t, drop: self.network(x_t, t, cond, drop),
                x0,
                self.generator,
                config.cond_drop_prob,
                self.timestep_mean,
                config.timestep_std,
                batch,
                rows,
                self.noise_generator,
            )
        self.optimizer.zero_grad(set_to_none=True)
        value, grad_norm = self.processes.mean(loss), math.nan  # the global batch's loss, in every process
        if math.isfinite(value):
            loss.backward()
            limit = config.grad_clip if config.grad_clip > 0 else math.inf  # inf: measured, not clipped
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), limit))
        if not self.health.judge(self.step, value, grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            return value
        self.optimizer.step()
        self.scheduler.step()
        self.ema.update_parameters(self.model)
        self.step += 1
        return value

    def train(self, stop_at: int | None = None, max_seconds: float | None = None) -> dict[str, float]:
        """Run until ``config.steps`` (or ``stop_at``, to split a run, or until ``max_seconds``
        of wall clock have passed, for equal-time comparisons); returns summary numbers."""
        config = self.config
        end = min(config.steps, stop_at or config.steps)
        flops = training_flops_per_image(self.model, config.image_size)
        bar = tqdm(total=end, initial=self.step, desc="train", unit="step", disable=not self.progress)
        losses: list[float] = []
        images, started, seconds_before = 0, time.perf_counter(), self.train_seconds
        while self.step < end and (max_seconds is None or time.perf_counter() - started < max_seconds):
            step_before = self.step
            loss = self.train_step()
            if self.step == step_before:  # refused by the health check
                self.after_skip()
                continue
            losses.append(loss)
            images += self.last_batch_size
            bar.update(1)
            if self.curriculum is not None and self.curriculum.observe(self.step, losses[-1]):
                self.log_stage(bar)
            elapsed = time.perf_counter() - started
            self.train_seconds = seconds_before + elapsed
            self.export_snapshots()
            if self.step % config.log_every == 0 or self.step == end:
                rate = images / elapsed
                bar.set_postfix(loss=f"{losses[-1]:.4f}", img_s=f"{rate:.1f}", tflops=f"{rate * flops / 1e12:.3f}")
                recent = losses[-config.log_every :]
                stage = None if self.curriculum is None else self.curriculum.index
                self.history.append(
                    {
                        "step": self.step,
                        "seconds": elapsed,
                        "loss": sum(recent) / len(recent),
                        "images_per_s": rate,
                        "stage": stage,
                    }
                )
                if self.processes.is_main:
                    writer = self.writer()
                    writer.add_scalar("train/loss", losses[-1], self.step)
                    writer.add_scalar("train/lr", self.scheduler.get_last_lr()[0], self.step)
                    writer.add_scalar("train/images_per_s", rate, self.step)
            if config.sample_every and self.step % config.sample_every == 0 and self.processes.is_main:
                self.writer().add_image("samples", self.sample_grid(), self.step)
            if config.checkpoint_every and (self.step % config.checkpoint_every == 0 or self.step == config.steps):
                self.save_checkpoint()
        bar.close()
        if self.step == config.steps:
            self.export(self.out_dir / "model")
            if config.snapshot_minutes:  # the end of the run on the quality-against-time curve too
                self.export_snapshot(f"final-{round(self.train_seconds / 60)}min", round(self.train_seconds / 60))
        elif config.checkpoint_every and self.step % config.checkpoint_every:
            self.save_checkpoint()  # stopped early (stop_at or the clock): resume here, not at the last periodic one
        if self._writer is not None:
            self._writer.flush()
        elapsed = time.perf_counter() - started
        return {
            "step": self.step,
            "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:])),
            "images_per_s": images / elapsed if elapsed > 0 else 0.0,
            "train_flops_per_image": flops,
            "seconds": elapsed,
        }

    def after_skip(self) -> None:
        """Log the skipped step; roll back to the newest intact checkpoint with a lower learning
        rate when the skips keep coming, and give up after too many rollbacks."""
        self.log_health(self.health.events[-1])
        if not self.health.needs_rollback:
            return
        problem = self.health.events[-1]["reason"]
        if self.health.rollbacks >= self.health.settings.max_rollbacks or not self.roll_back():
            raise TrainingDiverged(
                f"step {self.step}: {problem}, {self.health.skips_in_a_row} times in a row, after "
                f"{self.health.rollbacks} rollbacks; resume from a checkpoint with a lower learning rate"
            )
        self.log_health(self.health.events[-1])

    def roll_back(self) -> bool:
        """Back to the newest intact checkpoint, learning rate scaled by the settings' factor,
        batches drawn anew from there (a bad batch is not met again); False without a checkpoint."""
        from_step = self.step
        self.processes.wait()  # the main process may be writing a checkpoint
        if not self.resume():
            return False
        self.lr_scale *= self.health.settings.rollback_lr_factor
        # each group's own starting rate: the added layers' group keeps its multiple
        self.scheduler.base_lrs = [group["initial_lr"] * self.lr_scale for group in self.optimizer.param_groups]
        for group, lr in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = lr * self.scheduler.lr_lambdas[0](self.step)
        reseed = self.config.seed + 1_000_003 * (self.health.rollbacks + 1) + self.step
        self.generator.manual_seed(reseed)
        self.noise_generator.manual_seed(reseed)
        self.health.rolled_back(from_step, self.step, self.lr_scale)
        return True

    def log_health(self, event: dict) -> None:
        """A health event to TensorBoard (text) and to ``logs/health.jsonl`` (by the main process)."""
        if not self.processes.is_main:
            return
        self.writer().add_text("health", json.dumps(event), event["step"])
        path = self.out_dir / "logs" / "health.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as log:
            log.write(json.dumps(event) + "\n")

    def export_snapshots(self) -> None:
        """Export the EMA model for every ``snapshot_minutes`` mark passed and not yet exported."""
        if not self.processes.is_main:
            return
        for minutes in self.config.snapshot_minutes:
            folder = self.out_dir / "snapshots" / f"{minutes}min"
            if self.train_seconds >= minutes * 60 and not folder.exists():
                self.export_snapshot(folder.name, minutes)

    def export_snapshot(self, name: str, minutes: int) -> None:
        """The EMA model as ``snapshots/NAME`` with a ``snapshot.json`` (minutes, step, seconds)."""
        folder = self.out_dir / "snapshots" / name
        self.export(folder)
        info = {"minutes": minutes, "step": self.step, "train_seconds": self.train_seconds}
        atomic_write_text(folder / "snapshot.json", json.dumps(info, indent=2) + "\n")

    def log_stage(self, bar) -> None:
        """Say in TensorBoard and on the progress bar that the curriculum moved to its next stage."""
        index, stage = self.curriculum.index, self.curriculum.stage
        if not self.processes.is_main:
            return
        self.writer().add_scalar("curriculum/stage", index, self.step)
        self.writer().add_text("curriculum", f"step {self.step}: stage {index + 1} ({stage.describe()})", self.step)
        bar.set_description(f"train stage {index + 1}/{len(self.curriculum.stages)}: {stage.describe()}")

    def sizes_until(self, last_stage: int | None) -> tuple[int, ...]:
        """Image sizes of the curriculum's stages up to ``last_stage`` (None: all), or of the run."""
        if self.curriculum is not None:
            stages = self.curriculum.stages[: None if last_stage is None else last_stage + 1]
            return tuple(sorted({size for stage in stages for size in stage.sizes}))
        return tuple(sorted(set(self.config.resolutions or (self.config.image_size,))))

    @property
    def planned_sizes(self) -> tuple[int, ...]:
        """Image sizes this run trains at."""
        return self.sizes_until(None)

    @property
    def trained_sizes(self) -> tuple[int, ...]:
        """Image sizes this run has trained at so far."""
        return self.sizes_until(self.curriculum.index if self.curriculum is not None else None)

    def export(self, folder: Path, dtype: torch.dtype | None = None, max_shard_bytes: int = MAX_SHARD_BYTES) -> None:
        """Write the EMA weights as a model folder (config.json with the sizes trained at, and
        safetensors shards of at most ``max_shard_bytes``), or, for a LoRA run, as an adapter
        folder of the LoRA weights; by the main process."""
        if not self.processes.is_main:
            return
        if self.config.lora_rank:
            save_adapter(self.ema.module, folder, self.config.lora_rank, 2 * self.config.lora_rank, self.config.init)
            return
        config = self.model_config
        if isinstance(config, FractalConfig):
            config = replace(config, trained_sizes=self.trained_sizes)
        save_model(self.ema.module, folder, dtype, max_shard_bytes, config=config)

    @torch.no_grad()
    def sample_grid(self, steps: int = 20, guidance: float = 3.0) -> torch.Tensor:
        """A ``(C, H, W)`` row of EMA samples in [0, 1], one per class (up to 8), for TensorBoard."""
        model = self.ema.module.eval()
        if self.dataset.labels is not None:
            firsts = [int((self.dataset.labels == k).nonzero()[0]) for k in self.dataset.labels.unique()[:8].tolist()]
            indices = torch.tensor(firsts)
        else:
            indices = torch.linspace(0, len(self.dataset) - 1, min(8, len(self.dataset))).long()
        cond = self.conditioning(indices, fixed_captions=True).to(self.device)
        count = len(indices)
        gen = torch.Generator().manual_seed(0)
        size = self.config.image_size
        noise = torch.randn(count, self.model_config.in_channels, size, size, generator=gen).to(self.device)
        images = sample_euler(guided_velocity(model, cond, guidance), noise, time_grid(steps, device=self.device))
        row = images.clamp(-1, 1).add(1).div(2).permute(1, 2, 0, 3).reshape(self.model_config.in_channels, size, -1)
        return row.float().cpu()


class ScalarLog:
    """The part of TensorBoard's SummaryWriter the trainer uses, as JSON lines (scalars and text)."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"tag": tag, "value": float(value), "step": int(step)}) + "\n")

    def add_text(self, tag: str, text: str, step: int) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"tag": tag, "text": text, "step": int(step)}) + "\n")

    def add_image(self, tag: str, image: torch.Tensor, step: int) -> None:
        """Images are not kept without TensorBoard."""

    def flush(self) -> None:
        """Every line is written when it is added."""
