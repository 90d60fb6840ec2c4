"""Where a method's time goes, layer by layer: dispatched aten operations and CPU time of each encoder layer and of
the rest of the pass (embeddings, final norm, heads), from torch.profiler (`ats-hf benchmark --profile`).

The count is the one the latency work is held to: every `aten::` event (nested ones too), so an ATS layer's extra
operations are (its count - the same layer's count in the dense pass)."""

from dataclasses import asdict, dataclass

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from ..methods import Method
from ..reporting import format_grid

OUTSIDE = "rest"  # what runs outside the encoder layers


@dataclass(frozen=True)
class LayerProfile:
    """One method's pass: per layer (and `OUTSIDE`), the aten events and the CPU milliseconds spent in them."""

    method: str
    events: dict[str, int]
    milliseconds: dict[str, float]

    @property
    def total_events(self) -> int:
        return sum(self.events.values())

    @property
    def total_milliseconds(self) -> float:
        return sum(self.milliseconds.values())

    def to_dict(self) -> dict:
        return asdict(self)


def profile_layers(model, method: Method, pixel_values: torch.Tensor, passes: int = 3) -> LayerProfile:
    """Profile `passes` forward passes of `method` on `pixel_values` (after one untimed pass) and return the
    per-pass mean per layer."""
    layers = model.base_model.ats_encoder_layers
    handles = []
    for index, layer in enumerate(layers):
        scope = {}

        def enter(module, args, index=index, scope=scope):
            scope["range"] = record_function(f"layer {index}")
            scope["range"].__enter__()

        def leave(module, args, output, scope=scope):
            scope.pop("range").__exit__(None, None, None)

        handles += [layer.register_forward_pre_hook(enter), layer.register_forward_hook(leave)]
    try:
        with torch.inference_mode(), method.applied(model):
            method.run(model, pixel_values)
            with profile(activities=[ProfilerActivity.CPU]) as recorded:
                for _ in range(passes):
                    method.run(model, pixel_values)
    finally:
        for handle in handles:
            handle.remove()
    events, microseconds = {}, {}
    for event in recorded.events():
        if not event.name.startswith("aten::"):
            continue
        scope = _layer_of(event)
        events[scope] = events.get(scope, 0) + 1
        if event.cpu_parent is None or not event.cpu_parent.name.startswith("aten::"):  # outermost aten event only
            microseconds[scope] = microseconds.get(scope, 0.0) + event.cpu_time_total
    names = [f"layer {index}" for index in range(len(layers))] + [OUTSIDE]
    return LayerProfile(method.name, {name: events.get(name, 0) / passes for name in names},
                        {name: microseconds.get(name, 0.0) / passes / 1e3 for name in names})


def _layer_of(event) -> str:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("layer "):
            return parent.name
        parent = parent.cpu_parent
    return OUTSIDE


def format_profiles(profiles: list[LayerProfile], ats_layers: tuple[int, ...]) -> str:
    """A table of events and time share per layer, one column pair per method; the first is the reference (dense),
    and a line under it gives each other method's extra events per ATS layer."""
    names = list(profiles[0].events)
    header = ["layer"] + [f"{p.method}: {what}" for p in profiles for what in ("aten events", "% of time")]
    rows = [[name] + [cell for p in profiles for cell in (f"{p.events[name]:.0f}",
                                                           f"{100 * p.milliseconds[name] / p.total_milliseconds:.1f}")]
            for name in names]
    rows.append(["all"] + [cell for p in profiles for cell in (f"{p.total_events:.0f}",
                                                                f"{p.total_milliseconds:.1f} ms")])
    lines = [format_grid(header, rows)]
    reference = profiles[0]
    for other in profiles[1:]:
        if ats_layers:
            extra = (other.total_events - reference.total_events) / len(ats_layers)
            lines.append(f"{other.method}: {extra:.1f} extra aten events per ATS layer ({len(ats_layers)} ATS layers), "
                         f"{other.total_milliseconds / reference.total_milliseconds:.2f} of the reference's CPU time")
    return "\n".join(lines)


__all__ = ["LayerProfile", "format_profiles", "profile_layers"]
