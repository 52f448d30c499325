"""Plain supervised training (cross-entropy), the undefended victim."""
import dataclasses

from workloads.hardening import HardeningContext, HardeningResult, register
from workloads.seeds import derive_seed
from workloads.training import fit


@dataclasses.dataclass(frozen=True)
class NoParams:
    pass


@register("none", NoParams)
def train(params: NoParams, ctx: HardeningContext) -> HardeningResult:
    fit(ctx.model, ctx.data.x_train, ctx.data.y_train, ctx.train, seed=derive_seed("victim/train", ctx.seed),
        device=ctx.device)
    return HardeningResult(ctx.model)
