"""The one frozen-backbone interface every head uses, shaped like the official DINOv2 hub model.

A family (DINOv2, DINOv3) only says how to turn padded images into the tokens of some blocks
(``block_tokens``) and which final norm to apply; padding, autocast, freezing, the speed options
and the official ``forward_features`` / ``get_intermediate_layers`` outputs live here once.

Shapes: images ``(B, 3, H, W)``; patch grid ``h, w = ceil(H / p), ceil(W / p)`` (inputs are
centre-padded to multiples of the patch size p); tokens ``(B, 1 + R + h*w, C)`` ordered class
token, R register tokens, patches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from backbones.features import parse_blocks
from backbones.padding import center_pad

WEIGHT_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
COMPILE_MODES: tuple[str, ...] = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class FrozenBackbone(nn.Module):
    """A frozen ViT with the official DINOv2 hub API.

    Subclasses set ``embed_dim``, ``patch_size``, ``num_register_tokens``, ``n_blocks`` and ``norm``
    and implement ``block_tokens``. ``configure_speed`` picks the weight dtype, fused attention and
    ``torch.compile``; outputs are float32 whatever the options (float64 once the module is made double, as
    Lightning's ``trainer.precision=64-true`` does).
    """

    embed_dim: int
    patch_size: int
    num_register_tokens: int
    n_blocks: int
    norm: nn.Module
    autocast_dtype: torch.dtype = torch.bfloat16
    weight_dtype: torch.dtype = torch.float32
    compile_mode: str | None = None
    random_weights: bool = False
    """True when no weights were found and ``load_backbone(random_fallback=True)`` kept the random initialisation."""
    _compiled: Callable | None = None

    def freeze(self) -> None:
        """No gradients, eval mode for good (``train()`` keeps it there)."""
        self.requires_grad_(False)
        self.eval()

    @property
    def output_dtype(self) -> torch.dtype:
        """The dtype of the inputs it computes in and of its outputs: float32, or float64 after ``.double()``."""
        return torch.float64 if self.norm.weight.dtype == torch.float64 else torch.float32

    def train(self, mode: bool = True) -> FrozenBackbone:
        """The backbone is frozen: it stays in eval mode whatever the caller asks."""
        return super().train(False)

    def configure_speed(
        self, dtype: str = "float32", compile: bool | str | None = None, fused_attention: bool = True
    ) -> FrozenBackbone:
        """Set the speed options once, right after loading; returns ``self``.

        Args:
            dtype: ``float32`` (default: fp32 weights, bf16 autocast on CUDA, fp32 on the CPU), or
                ``bfloat16`` / ``float16``: the weights of every linear and convolution layer are stored
                in that dtype and every call runs under autocast to it, on any device. Autocast would cast
                the same weights to the same values on every call, so on CUDA the outputs equal the
                float32 option's; norms, position embeddings and layer scales stay float32.
            compile: ``None``/``False`` (eager), ``True``/``"default"``, or a ``torch.compile`` mode:
                ``"max-autotune-no-cudagraphs"``, ``"max-autotune"`` or ``"reduce-overhead"`` (CUDA graphs).
                The blocks and the final norm are compiled as one graph per input shape (torch.compile's
                limit: 8 shapes, then eager): best with a fixed input size, as in feature extraction.
            fused_attention: run attention through ``F.scaled_dot_product_attention`` (timm's
                ``fused_attn``; flash / memory-efficient kernels on CUDA). timm turns it on unless
                ``TIMM_FUSED_ATTN=0``; this makes sure it is.
        """
        if dtype not in WEIGHT_DTYPES:
            raise ValueError(f"backbone.dtype={dtype!r} is not an option: use one of {', '.join(WEIGHT_DTYPES)}.")
        if compile is True:
            compile = "default"
        if compile not in (None, False, *COMPILE_MODES):
            raise ValueError(
                f"backbone.compile={compile!r} is not an option: use null (eager), true, or one of {', '.join(COMPILE_MODES)}."
            )
        new_dtype = WEIGHT_DTYPES[dtype]
        if self.weight_dtype != torch.float32 and new_dtype != self.weight_dtype:
            raise ValueError(
                f"The weights are already rounded to {self.weight_dtype}; reload the backbone to use dtype={dtype!r}."
            )
        self.weight_dtype = new_dtype
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                module.to(new_dtype)
            if hasattr(module, "fused_attn"):
                module.fused_attn = fused_attention
        self.compile_mode = compile or None
        self._compiled = None
        if self.compile_mode is not None:
            mode = None if self.compile_mode == "default" else self.compile_mode
            # The unbound function, not the bound method: a deep copy of the module then calls its own weights.
            # dynamic=False: one static graph per input shape (a last, smaller batch must not make the
            # main batch size run a slower shape-generic graph).
            self._compiled = torch.compile(type(self)._trunk, mode=mode, dynamic=False)
        return self

    def block_tokens(self, x: Tensor, indices: Sequence[int]) -> list[Tensor]:
        """Padded images ``(B, 3, h*p, w*p)`` -> the un-normed tokens ``(B, 1 + R + h*w, C)`` of blocks ``indices`` (sorted)."""
        raise NotImplementedError

    def _trunk(self, x: Tensor, indices: tuple[int, ...], norm: bool) -> tuple[list[Tensor], list[Tensor]]:
        """Padded images -> (un-normed tokens, normed tokens or ``[]``) of blocks ``indices`` (sorted, unique)."""
        tokens = self.block_tokens(x, indices)
        return tokens, [self.norm(t) for t in tokens] if norm else []

    def _run(
        self, x: Tensor, indices: Sequence[int], norm: bool
    ) -> tuple[dict[int, Tensor], dict[int, Tensor], tuple[int, int]]:
        """Images -> ({block: un-normed tokens}, {block: normed tokens} when ``norm``, patch grid ``(h, w)``)."""
        x = center_pad(x, self.patch_size)
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        wanted = tuple(sorted(set(indices)))
        if self._compiled is None:
            raw, normed = self._trunk(x, wanted, norm)
        else:
            graphs = x.is_cuda and self.compile_mode in ("reduce-overhead", "max-autotune")
            if graphs:
                torch.compiler.cudagraph_mark_step_begin()
            raw, normed = self._compiled(self, x, wanted, norm)
            if graphs:
                # CUDA graphs reuse their output memory on the next call: callers may keep these tensors.
                raw, normed = [t.clone() for t in raw], [t.clone() for t in normed]
        return dict(zip(wanted, raw)), dict(zip(wanted, normed)), grid

    def _autocast(self, x: Tensor) -> torch.autocast:
        if self.weight_dtype != torch.float32:
            return torch.autocast(x.device.type, dtype=self.weight_dtype)
        return torch.autocast("cuda", dtype=self.autocast_dtype, enabled=x.is_cuda)

    @torch.no_grad()
    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        """Normed class token ``(B, C)``, registers ``(B, R, C)``, patches ``(B, h*w, C)``; pre-norm tokens ``(B, 1+R+h*w, C)``."""
        x = check_images(x).to(self.output_dtype)
        last = self.n_blocks - 1
        with self._autocast(x):
            raw, normed, _ = self._run(x, [last], norm=True)
        tokens, normed = raw[last], normed[last]
        r = 1 + self.num_register_tokens
        return {
            "x_norm_clstoken": normed[:, 0].to(self.output_dtype),
            "x_norm_regtokens": normed[:, 1:r].to(self.output_dtype),
            "x_norm_patchtokens": normed[:, r:].to(self.output_dtype),
            "x_prenorm": tokens.to(self.output_dtype),
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
        indices = parse_blocks(n, self.n_blocks, "n")
        x = check_images(x).to(self.output_dtype)
        with self._autocast(x):
            raw, normed, (h, w) = self._run(x, indices, norm)
        outputs = [(normed if norm else raw)[i] for i in indices]
        r = 1 + self.num_register_tokens
        class_tokens = [out[:, 0].to(self.output_dtype) for out in outputs]
        patches = [out[:, r:].to(self.output_dtype) for out in outputs]
        if reshape:
            patches = [p.reshape(p.shape[0], h, w, p.shape[-1]).permute(0, 3, 1, 2).contiguous() for p in patches]
        if return_class_token:
            return tuple(zip(patches, class_tokens))
        return tuple(patches)

    def forward(self, x: Tensor) -> Tensor:
        """The normed class token ``(B, C)``, as the official hub model returns without a head."""
        return self.forward_features(x)["x_norm_clstoken"]


def check_images(x: object) -> Tensor:
    """``x`` as float32 images ``(B, 3, H, W)`` (other float dtypes are converted); ValueError naming what is wrong
    otherwise, instead of a convolution's shape error from deep inside the model. Shape checks only: no sync."""
    if not isinstance(x, Tensor):
        raise ValueError(f"x must be a torch.Tensor of images (B, 3, H, W), not a {type(x).__name__}.")  # noqa: TRY004 (the API raises ValueError)
    if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] == 0 or x.shape[3] == 0:
        hint = " (one image: add the batch dimension, x[None])" if x.ndim == 3 else ""
        raise ValueError(
            f"x must be RGB images (B, 3, H, W) with H, W >= 1, channels first; got shape {tuple(x.shape)}{hint}."
        )
    if not x.dtype.is_floating_point:
        raise ValueError(
            f"x holds {x.dtype} values; the backbone takes float images normalised with the ImageNet mean and std "
            "(e.g. torchvision's ToDtype(torch.float32, scale=True) then Normalize)."
        )
    return x.float()
