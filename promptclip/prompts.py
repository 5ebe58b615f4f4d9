"""Learnable prompt parameters: one set per group (shared) and one per task (private).

Each group and each task owns *separate* parameters, so an optimizer step on task A's loss
leaves every other task's private prompts and every other group's prompts bit-identical
(their .grad stays None, so even AdamW's weight decay skips them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import Tensor, nn

TASK_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def check_task_name(name: str) -> str:
    if not TASK_NAME.match(name):
        raise ValueError(f"task/domain name {name!r} must match {TASK_NAME.pattern} (lowercase, digits, _ and -)")
    return name


@dataclass
class PromptConfig:
    group_tokens: int = 4  # shared tokens per layer, per tower, for every task in a group
    private_tokens: int = 4  # task-private tokens per layer, per tower
    depth: int | None = None  # layers that receive fresh prompts (None: every layer)

    def __post_init__(self) -> None:
        if self.group_tokens < 0 or self.private_tokens < 0:
            raise ValueError(f"token counts must be >= 0, got group={self.group_tokens} private={self.private_tokens}")
        if self.depth is not None and self.depth < 1:
            raise ValueError(f"depth must be >= 1 or None, got {self.depth}")

    @property
    def tokens(self) -> int:
        return self.group_tokens + self.private_tokens

    def depth_for(self, layers: int) -> int:
        return layers if self.depth is None else min(self.depth, layers)


class TaskPrompts(nn.Module):
    """Group-shared + task-private deep prompts for both towers.

    Args:
        tasks: task (domain) names, in index order.
        groups: partition of `tasks` into groups; a group prompt is shared by its members.
        config: token counts and depth.
        vision_width, vision_layers, text_width, text_layers: the frozen CLIP's shapes.
    """

    def __init__(self, tasks: list[str], groups: list[list[str]], config: PromptConfig,
                 vision_width: int, vision_layers: int, text_width: int, text_layers: int):
        super().__init__()
        flat = [t for g in groups for t in g]
        if sorted(flat) != sorted(tasks) or len(set(flat)) != len(flat):
            raise ValueError(f"groups {groups} must partition the tasks {tasks} exactly once each")
        self.tasks = [check_task_name(t) for t in tasks]
        self.groups = [list(g) for g in groups]
        self.group_of = {t: gi for gi, g in enumerate(self.groups) for t in g}
        self.config = config
        self.depth_v = config.depth_for(vision_layers)
        self.depth_t = config.depth_for(text_layers)
        ng, npv = config.group_tokens, config.private_tokens

        def p(depth: int, n: int, width: int) -> nn.Parameter:
            return nn.Parameter(torch.zeros(depth, n, width))

        self.vision_group = nn.ParameterDict({f"g{i}": p(self.depth_v, ng, vision_width) for i in range(len(groups))})
        self.text_group = nn.ParameterDict({f"g{i}": p(self.depth_t, ng, text_width) for i in range(len(groups))})
        self.vision_private = nn.ParameterDict({t: p(self.depth_v, npv, vision_width) for t in self.tasks})
        self.text_private = nn.ParameterDict({t: p(self.depth_t, npv, text_width) for t in self.tasks})

    def reset_parameters(self, vision_rms: Tensor | None = None, text_rms: Tensor | None = None,
                         std: float = 0.02, generator: torch.Generator | None = None) -> None:
        """N(0, 1) scaled per layer by the frozen stream's RMS there (or by `std` if not given)."""
        with torch.no_grad():
            for params, rms in ((self.vision_group, vision_rms), (self.vision_private, vision_rms),
                                (self.text_group, text_rms), (self.text_private, text_rms)):
                for prm in params.values():
                    noise = torch.randn(prm.shape, generator=generator)
                    scale = rms[: prm.shape[0]].view(-1, 1, 1) if rms is not None else std
                    prm.copy_(noise * scale)

    def group_params(self, task: str) -> tuple[nn.Parameter, nn.Parameter]:
        g = f"g{self.group_of[task]}"
        return self.vision_group[g], self.text_group[g]

    def private_params(self, task: str) -> tuple[nn.Parameter, nn.Parameter]:
        return self.vision_private[task], self.text_private[task]

    def vision(self, task: str) -> Tensor:
        """(depth_v, n_group + n_private, Wv): group tokens first, then private."""
        return torch.cat([self.vision_group[f"g{self.group_of[task]}"], self.vision_private[task]], dim=1)

    def text(self, task: str) -> Tensor:
        """(depth_t, n_group + n_private, Wt)."""
        return torch.cat([self.text_group[f"g{self.group_of[task]}"], self.text_private[task]], dim=1)

    def vision_bank(self) -> Tensor:
        """(T, depth_v, n, Wv): every task's vision prompts, gathered per sample by task index."""
        return torch.stack([self.vision(t) for t in self.tasks])

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def versions(self, task: str) -> tuple[int, ...]:
        """Changes whenever an in-place update (optimizer step, load) touches this task's prompts."""
        vg, tg = self.group_params(task)
        vp, tp = self.private_params(task)
        return tuple(p._version for p in (vg, tg, vp, tp)) + tuple(id(p) for p in (vg, tg, vp, tp))
