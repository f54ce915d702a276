"""What every probe on a frozen model needs: the frozen part stays in eval mode and out of checkpoints."""

from __future__ import annotations

from typing import Any

from torch import nn


class FrozenModulesMixin(nn.Module):
    """Mixin for LightningModules that hold frozen submodules, named (dotted paths) in ``frozen_modules``.

    They stay in eval mode whatever ``train()`` is asked, are left out of saved checkpoints (a backbone
    can weigh GBs), and are put back from the live modules on load so that the head's keys still load strictly.
    """

    frozen_modules: tuple[str, ...] = ("backbone",)

    def train(self, mode: bool = True) -> FrozenModulesMixin:
        super().train(mode)
        for name in self.frozen_modules:
            self.get_submodule(name).eval()
        return self

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        prefixes = tuple(f"{name}." for name in self.frozen_modules)
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith(prefixes)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        for name in self.frozen_modules:
            state = self.get_submodule(name).state_dict()
            checkpoint["state_dict"].update({f"{name}.{key}": value for key, value in state.items()})
