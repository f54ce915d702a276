"""The one frozen-backbone interface every head uses, shaped like the official DINOv2 hub model.

A family (DINOv2, DINOv3) only says how to turn padded images into the tokens of some blocks
(``block_tokens``) and which final norm to apply; padding, autocast, freezing and the official
``forward_features`` / ``get_intermediate_layers`` outputs live here once.

Shapes: images ``(B, 3, H, W)``; patch grid ``h, w = ceil(H / p), ceil(W / p)`` (inputs are
centre-padded to multiples of the patch size p); tokens ``(B, 1 + R + h*w, C)`` ordered class
token, R register tokens, patches.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from backbones.padding import center_pad


class FrozenBackbone(nn.Module):
    """A frozen ViT with the official DINOv2 hub API.

    Subclasses set ``embed_dim``, ``patch_size``, ``num_register_tokens``, ``n_blocks`` and ``norm``
    and implement ``block_tokens``.
    """

    embed_dim: int
    patch_size: int
    num_register_tokens: int
    n_blocks: int
    norm: nn.Module
    autocast_dtype: torch.dtype = torch.bfloat16

    def freeze(self) -> None:
        """No gradients, eval mode for good (``train()`` keeps it there)."""
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "FrozenBackbone":
        """The backbone is frozen: it stays in eval mode whatever the caller asks."""
        return super().train(False)

    def block_tokens(self, x: Tensor, indices: Sequence[int]) -> list[Tensor]:
        """Padded images ``(B, 3, h*p, w*p)`` -> the un-normed tokens ``(B, 1 + R + h*w, C)`` of blocks ``indices`` (sorted)."""
        raise NotImplementedError

    def _run(self, x: Tensor, indices: Sequence[int]) -> tuple[dict[int, Tensor], tuple[int, int]]:
        x = center_pad(x, self.patch_size)
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        wanted = sorted(set(indices))
        return dict(zip(wanted, self.block_tokens(x, wanted))), grid

    def _autocast(self, x: Tensor) -> torch.autocast:
        return torch.autocast("cuda", dtype=self.autocast_dtype, enabled=x.is_cuda)

    @torch.no_grad()
    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        """Normed class token ``(B, C)``, registers ``(B, R, C)``, patches ``(B, h*w, C)``; pre-norm tokens ``(B, 1+R+h*w, C)``."""
        with self._autocast(x):
            tokens = self._run(x, [self.n_blocks - 1])[0][self.n_blocks - 1]
            normed = self.norm(tokens)
        r = 1 + self.num_register_tokens
        return {
            "x_norm_clstoken": normed[:, 0].float(),
            "x_norm_regtokens": normed[:, 1:r].float(),
            "x_norm_patchtokens": normed[:, r:].float(),
            "x_prenorm": tokens.float(),
        }

    @torch.no_grad()
    def get_intermediate_layers(
        self,
        x: Tensor,
        n: int | Sequence[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        norm: bool = True,
    ) -> tuple[Tensor, ...] | tuple[tuple[Tensor, Tensor], ...]:
        """The patch tokens of some blocks, with the official meaning of every argument.

        Args:
            x: images ``(B, 3, H, W)``; sides that are not multiples of the patch size are centre-padded.
            n: an int takes the last ``n`` blocks; a sequence takes those block indices, in that order.
            reshape: patches as maps ``(B, C, h, w)`` instead of ``(B, h*w, C)``.
            return_class_token: pair every output with its class token ``(B, C)``.
            norm: apply the final norm to every output.
        """
        indices = list(range(self.n_blocks - n, self.n_blocks)) if isinstance(n, int) else list(n)
        if not indices or min(indices) < 0 or max(indices) >= self.n_blocks:
            raise ValueError(f"Block indices {n} are out of range for a backbone with {self.n_blocks} blocks.")
        with self._autocast(x):
            by_index, (h, w) = self._run(x, indices)
            outputs = [self.norm(by_index[i]) if norm else by_index[i] for i in indices]
        r = 1 + self.num_register_tokens
        class_tokens = [out[:, 0].float() for out in outputs]
        patches = [out[:, r:].float() for out in outputs]
        if reshape:
            patches = [p.reshape(p.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous() for p in patches]
        if return_class_token:
            return tuple(zip(patches, class_tokens))
        return tuple(patches)

    def forward(self, x: Tensor) -> Tensor:
        """The normed class token ``(B, C)``, as the official hub model returns without a head."""
        return self.forward_features(x)["x_norm_clstoken"]
