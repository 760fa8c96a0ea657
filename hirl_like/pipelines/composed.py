"""The composable pipeline: students + EMA teachers + a weighted list of objectives.

Methods are configurations of this one class:

    Harmony  objectives: [clip, ibot, mae, mlm, text_distill]   (with clip.soft_targets: true)
    CLIP     objectives: [clip]
    iBOT     objectives: [ibot]
    SLIP     objectives: [clip, simclr]
    MoCo v2 / MoCo v3 / SimSiam / SwAV   objectives: [mocov2] / [mocov3] / [simsiam] / [swav]
             (ViT or ResNet backbone: they read the pooled-feature forwards of
             :mod:`hirl_like.pipelines.forwards.features`)

``objectives`` accepts a list of names, a ``{name: weight}`` mapping, or the reference code's
underscore string (``clip_ibot_mae``). Each objective's arguments sit under a pipeline key of
its own name (``pipeline.ibot.out_dim=8192``); argument nodes of objectives that are not listed
are ignored, so one base config can hold them all.

forward(batch) returns {"loss": sum_k w_k * L_k, "<name>": L_k (unweighted, detached),
"<name>/<diagnostic>": ...}: the trainer does one backward on "loss" and logs the rest.

Shared forwards: each objective declares the batch views and shared forwards it reads
(``Objective.views`` / ``requires()``); the pipeline checks them when it is built and gives each
objective a scoped view of one :class:`StepCache` per step, so a forward that several objectives
read (the teacher ViT on the global crops, the text teacher, the masked caption) runs once.
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

import hirl_like.pipelines.forwards  # noqa: F401  (registers every shared forward)
import hirl_like.pipelines.objectives  # noqa: F401  (registers every objective)
from hirl_like.distributed import get_rank
from hirl_like.models.builders.projection import projection_export
from hirl_like.pipelines.backbones import Backbones, ema_update
from hirl_like.pipelines.forward_table import SHARED_FORWARDS, ForwardKey, forward_key
from hirl_like.pipelines.objective import Objective
from hirl_like.pipelines.step_cache import StepCache
from hirl_like.registry import OBJECTIVES, PIPELINES, check_arguments
from hirl_like.schedules import Progress, Span, check_span, cosine

if TYPE_CHECKING:
    from hirl_like.engine.epoch_context import EpochContext, RunInfo


def parse_objectives(spec: str | Sequence[str] | Mapping[str, float]) -> dict[str, float]:
    """'clip_ibot_mae' | [clip, ibot] | {clip: 1.0, ibot: 0.5} -> ordered {name: weight}."""
    if isinstance(spec, str):
        names = [n for n in _split_reference_string(spec)]
        weights = {n: 1.0 for n in names}
    elif isinstance(spec, Mapping):
        weights = {str(k): float(v) for k, v in spec.items()}
    elif isinstance(spec, Sequence):
        weights = {str(n): 1.0 for n in spec}
    else:
        raise ValueError(f"pipeline.objectives must be a list, a mapping or a string, got {spec!r}.")
    if not weights:
        raise ValueError(f"pipeline.objectives is empty; choose from {OBJECTIVES.keys()}.")
    for name in weights:
        OBJECTIVES.get(name)  # raises with the available names and the closest match
    return weights


def _split_reference_string(spec: str) -> list[str]:
    """Split 'clip_ibot_mae_mlm_text_distill' greedily on known objective names."""
    known = sorted(OBJECTIVES.keys(), key=len, reverse=True)
    names: list[str] = []
    rest = spec.strip().lower()
    while rest:
        for name in known:
            if rest == name or rest.startswith(name + "_"):
                names.append(name)
                rest = rest[len(name) + 1 :]
                break
        else:
            raise ValueError(f"cannot read objective string {spec!r} at {rest!r}; known objectives: {OBJECTIVES.keys()}.")
    return names


def check_objective_nodes(node: Mapping[str, Any], path: str, fixed: set[str]) -> None:
    """Every key of a pipeline node is one of its ``fixed`` arguments or an objective's argument
    node, checked against that objective's constructor; else a ValueError naming the closest key."""
    for key, value in node.items():
        if key in fixed:
            continue
        if key not in OBJECTIVES:
            hint = difflib.get_close_matches(key, [*OBJECTIVES.keys(), *fixed], n=1)
            raise ValueError(
                f"{path} got an unknown argument {key!r}"
                + (f"; did you mean {hint[0]!r}?" if hint else ".")
                + f" Pipeline arguments: {', '.join(sorted(fixed))},"
                f" or an objective's argument node ({', '.join(OBJECTIVES.keys())})."
            )
        if value is None:
            continue
        if not isinstance(value, Mapping):
            raise ValueError(f"{path}.{key} must be a mapping of {key}'s arguments, got {value!r}.")
        check_arguments(OBJECTIVES.get(key), value, context=f"config node {path}.{key} (objective {key!r})")


@PIPELINES.register("Harmony", aliases=("Composed",))
class ComposedPipeline(nn.Module):
    """Args:
    objectives: which objectives and their weights (see module docstring).
    vision: MODELS node of the student ViT (a ResNet for the objectives that read pooled features:
        dino, mocov2, mocov3, simsiam, swav). text: MODELS node of the text student (optional).
    embed_dim: joint space size. ema_momentum / ema_momentum_end: teacher EMA momentum, cosine
        per iteration from start to end over the whole run (Harmony: 0.996 -> 1).
    ema_half_life: instead of ``ema_momentum``, the teacher's starting half-life: epochs or a share
        of the run (``"5%"``); the start momentum is then ``0.5 ** (1 / half-life in iterations)``,
        so a teacher keeps pace with its student whatever the budget (0.996 is a half-life of 173
        iterations: 0.2% of a 25-epoch CC3M run at batch 768, 43% of a 400-iteration comparison).
    **objective_args: one mapping per objective name with its constructor arguments.
    """

    def __init__(
        self,
        objectives: str | Sequence[str] | Mapping[str, float] = ("clip",),
        vision: Mapping[str, Any] | None = None,
        text: Mapping[str, Any] | None = None,
        embed_dim: int = 512,
        ema_momentum: float = 0.996,
        ema_momentum_end: float = 1.0,
        ema_half_life: Span | None = None,
        **objective_args: Mapping[str, Any],
    ) -> None:
        super().__init__()
        if vision is None:
            raise ValueError("pipeline.vision is required, e.g. {name: vit, arch: vit_small, img_size: 224, patch_size: 16}.")
        if not 0.0 <= ema_momentum <= 1.0 or not 0.0 <= ema_momentum_end <= 1.0:
            raise ValueError(f"EMA momenta must lie in [0, 1], got {ema_momentum} -> {ema_momentum_end}.")
        ComposedPipeline.validate_config(objective_args, "pipeline")  # subclasses validate their own node
        self.weights = parse_objectives(objectives)
        self.backbones = Backbones(dict(vision), dict(text) if text is not None else None, embed_dim)
        self.objectives = nn.ModuleDict(
            {
                name: OBJECTIVES.build({"name": name, **dict(objective_args.get(name) or {})}, backbones=self.backbones)
                for name in self.weights
            }
        )
        self.backbones.finalize()
        self.forwards = SHARED_FORWARDS  # tests swap in a table with a reference forward
        for name, objective in self.objectives.items():
            for key in self._requirements(objective):
                self.forwards.check(key, owner=f"objective {name!r} ({type(objective).__name__}.requires())")
        self._weighted_terms: dict[str, torch.Tensor] = {}
        self.ema_half_life = None if ema_half_life is None else check_span(ema_half_life, "pipeline.ema_half_life")
        self.ema_momentum_start = ema_momentum
        self.ema_momentum_end = ema_momentum_end
        self.ema_momentum = ema_momentum
        self._progress = Progress(0, 1, 1)

    @staticmethod
    def validate_config(node: Mapping[str, Any], path: str) -> None:
        """Check the objective argument nodes (the ``**objective_args``) before anything is built.

        Called by the config loader on the pipeline node, so ``pipeline.ibot.out_dimm=64`` fails at
        load time with the objective's accepted arguments. Every node is checked, listed or not.
        """
        fixed = set(inspect.signature(ComposedPipeline.__init__).parameters) - {"self", "objective_args"}
        check_objective_nodes(node, path, fixed)

    @property
    def has_teachers(self) -> bool:
        return bool(self._ema_pairs())

    def _ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        pairs = list(self.backbones.ema_pairs())
        for objective in self.objectives.values():
            pairs.extend(objective.ema_pairs())
        return pairs

    def ema_momentum_at_start(self, progress: Progress) -> float:
        """The teachers' momentum at iteration 0 of the run ``progress`` belongs to."""
        if self.ema_half_life is None:
            return self.ema_momentum_start
        return 0.5 ** (1.0 / max(progress.iterations(self.ema_half_life), 1.0))

    def teacher_initial_share(
        self, iters_per_epoch: int, schedule_iterations: int, run_iterations: int | None = None
    ) -> float | None:
        """How much of their random initialisation the EMA teachers still hold after
        ``run_iterations`` steps of a schedule over ``schedule_iterations`` (default: all of them),
        or None without teachers.

        The EMA ``theta_T = prod_t m_t * theta_0 + sum_s (1 - m_s) prod_{t>s} m_t * theta_s`` keeps
        the weight ``prod_t m_t`` on the initial weights. The trainer warns when it is large: the
        exported teacher (and every soft target it gave) is then partly a random network, e.g. 13%
        for 0.99 -> 1 over 400 iterations, against ~1e-85 for the paper's 0.996 -> 1 on CC3M.
        """
        if not self.has_teachers:
            return None
        start = self.ema_momentum_at_start(Progress(0, iters_per_epoch, schedule_iterations))
        log_share = 0.0
        for it in range(schedule_iterations if run_iterations is None else run_iterations):
            m = cosine(start, self.ema_momentum_end, it, schedule_iterations)
            if m <= 0.0:
                return 0.0
            log_share += math.log(m)
        return math.exp(log_share)

    def update_schedules(self, progress: Progress) -> dict[str, float]:
        """Set every per-iteration value for this step; returns them for logging."""
        self._progress = progress
        values: dict[str, float] = {}
        if self.has_teachers:
            self.ema_momentum_start = self.ema_momentum_at_start(progress)
            self.ema_momentum = cosine(
                self.ema_momentum_start, self.ema_momentum_end, progress.iteration, progress.total_iterations
            )
            values["ema_momentum"] = self.ema_momentum
        for name, objective in self.objectives.items():
            values.update({f"{name}/{k}": v for k, v in objective.update_schedules(progress).items()})
        return values

    # -- shared forwards ----------------------------------------------------------------------
    @staticmethod
    def _requirements(objective: Objective) -> tuple[ForwardKey, ...]:
        return tuple(forward_key(k) for k in objective.requires())

    def _scoped(self, step: StepCache, name: str, objective: Objective) -> StepCache:
        cls = type(objective).__name__
        fix = f"declare it in {cls}.requires() (shared forwards) or {cls}.views (batch views)"
        return step.scoped(f"objective {name!r}", self._requirements(objective), objective.views, fix)

    def shared_forwards(self) -> dict[str, list[str]]:
        """{shared forward name: objectives that read it, directly or through another forward},
        for every forward this pipeline's objectives may run. A forward listed with several
        objectives runs once per step for all of them that ask with the same arguments (MLM and
        text distillation share the masked caption when their ``mask_prob`` agree)."""
        readers: dict[str, list[str]] = {}
        for name, objective in self.objectives.items():
            for forward in sorted(self.forwards.closure(k.name for k in self._requirements(objective))):
                readers.setdefault(forward, []).append(name)
        return dict(sorted(readers.items()))

    def required_views(self) -> set[str]:
        """Batch views the objectives and their shared forwards may read."""
        views = {v for objective in self.objectives.values() for v in objective.views}
        for forward in self.shared_forwards():
            views.update(self.forwards.get(forward).views)
        return views

    # -- one step ------------------------------------------------------------------------------
    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        step = StepCache(self.backbones, batch, self._progress, rank=get_rank(), forwards=self.forwards)
        scoped = {name: self._scoped(step, name, objective) for name, objective in self.objectives.items()}
        for name, objective in self.objectives.items():
            objective.prepare(scoped[name])
        out: dict[str, torch.Tensor] = {}
        weighted: dict[str, torch.Tensor] = {}
        total: torch.Tensor | None = None
        for name, objective in self.objectives.items():
            terms = objective(scoped[name])
            term = terms["loss"]
            weighted[name] = self.weights[name] * term
            total = weighted[name] if total is None else total + weighted[name]
            out[name] = term.detach()
            out.update({f"{name}/{k}": v.detach() for k, v in terms.items() if k != "loss"})
        assert total is not None  # parse_objectives refuses an empty list
        out["loss"] = total
        # Kept out of the returned dict: DDP would route every returned tensor through its output
        # hooks, and the trainer only differentiates these (per-objective gradient norms).
        self._weighted_terms = weighted
        return out

    def take_weighted_terms(self) -> dict[str, torch.Tensor]:
        """{objective: w_k * L_k} of the last forward, attached to its graph, then forgotten (so the
        graph is not kept alive past the step). The trainer measures each term's gradient norm."""
        terms, self._weighted_terms = self._weighted_terms, {}
        return terms

    def grad_norm_parameters(self) -> list[torch.nn.Parameter]:
        """The shared student ViT's trainable parameters: where per-objective gradient norms are measured."""
        return [p for p in self.backbones.student_vision.parameters() if p.requires_grad]

    def before_optimizer_step(self) -> None:
        for objective in self.objectives.values():
            objective.before_optimizer_step(self._progress)

    # -- the run as a whole (hirl_like.engine.epoch_context) -----------------------------------
    def check_run(self, run: "RunInfo") -> None:
        for objective in self.objectives.values():
            objective.check_run(run)

    def on_epoch_start(self, epoch: int, context: "EpochContext") -> None:
        for objective in self.objectives.values():
            objective.on_epoch_start(epoch, context)

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        pairs = self._ema_pairs()
        if pairs:
            ema_update(pairs, self.ema_momentum)
        for objective in self.objectives.values():
            objective.after_optimizer_step()

    def train(self, mode: bool = True) -> "ComposedPipeline":
        super().train(mode)
        self.backbones.train(mode)  # keeps teachers in eval mode
        for objective in self.objectives.values():
            for student, teacher in objective.ema_pairs():
                teacher.eval()
        return self

    # -- export ------------------------------------------------------------------------------
    def export_vision(self) -> nn.Module:
        return self.backbones.exported_vision()

    def export_text(self) -> dict[str, Any] | None:
        """What zero-shot and retrieval need: text encoder, image projection, logit scale."""
        text, image_projection = self.backbones.exported_text()
        if text is None or image_projection is None:
            return None
        head_node = getattr(self.backbones.student_vision, "projection_head", None)  # builder towers' head
        payload: dict[str, Any] = {
            "text": {k: v.detach().clone() for k, v in text.state_dict().items()},
            **projection_export(image_projection, head_node),  # the (E, W) weight, or a non-linear head
            "text_config": dict(self.backbones.text_cfg or {}),
            "embed_dim": self.backbones.embed_dim,
        }
        clip = self.objectives["clip"] if "clip" in self.objectives else None
        if clip is not None and hasattr(clip, "logit_scale"):
            payload["logit_scale"] = float(clip.logit_scale.detach().exp())
        return payload


@PIPELINES.register("CLIP")
def build_clip_pipeline(
    vision: Mapping[str, Any] | None = None,
    text: Mapping[str, Any] | None = None,
    embed_dim: int = 512,
    clip: Mapping[str, Any] | None = None,
) -> ComposedPipeline:
    """CLIP alone (hard targets): ``Harmony`` with ``objectives: [clip]``."""
    return ComposedPipeline(objectives=["clip"], vision=vision, text=text, embed_dim=embed_dim, clip=dict(clip or {}))
