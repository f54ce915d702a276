"""Segment Anything (SAM): building the official model sizes (or small ones for tests) and loading the official checkpoints."""

from __future__ import annotations

from functools import partial

import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

from backbones.weights import (
    CheckpointError,
    check_state_dict,
    load_state_dict_file,
    resolve_checkpoint,
)
from utils.errors import option

URL = "https://dl.fbaipublicfiles.com/segment_anything/"
# Meta publishes no checksums for these files, and the hex in their names is not a SHA-256 prefix. These full
# SHA-256 digests were pinned here earlier and are the ones many public projects record for the same files.
CHECKPOINTS = {
    "vit_b": ("sam_vit_b_01ec64.pth", "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"),
    "vit_l": ("sam_vit_l_0b3195.pth", "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622"),
    "vit_h": ("sam_vit_h_4b8939.pth", "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e"),
}
# Image-encoder width and depth of each size, to name the size a mismatched checkpoint was made for.
ENCODER_SIZES = {(768, 12): "vit_b", (1024, 24): "vit_l", (1280, 32): "vit_h"}
ENCODER_HEADS = {"vit_b": 12, "vit_l": 16, "vit_h": 16}


def check_sam_sizes(
    encoder_embed_dim: int | None,
    encoder_depth: int | None,
    encoder_num_heads: int | None,
    prompt_embed_dim: int | None,
    image_size: int | None,
) -> None:
    """ValueError naming the first size override SAM cannot be built with (``None`` keeps the official size):
    `build_sam` would silently take 0 as "official", and segment_anything fails later, deep in a forward pass."""
    sizes = {
        "encoder_embed_dim": encoder_embed_dim,
        "encoder_depth": encoder_depth,
        "encoder_num_heads": encoder_num_heads,
        "prompt_embed_dim": prompt_embed_dim,
        "image_size": image_size,
    }
    for name, value in sizes.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{option('sam', name, value)}: give a whole number of at least 1 (or null: official).")
    # the patch size is 16; the decoder's 8 attention heads run at half the prompt width
    for name, value, multiple in (("image_size", image_size, 16), ("prompt_embed_dim", prompt_embed_dim, 16)):
        if value is not None and value % multiple:
            raise ValueError(f"{option('sam', name, value)} is not a multiple of {multiple}, as SAM needs.")
    if encoder_embed_dim is not None and encoder_num_heads is not None and encoder_embed_dim % encoder_num_heads:
        raise ValueError(
            f"{option('sam', 'encoder_embed_dim', encoder_embed_dim)} does not split over "
            f"{option('sam', 'encoder_num_heads', encoder_num_heads)}: the width must be a multiple of the head count."
        )


def build_sam(
    model_type: str = "vit_h",
    encoder_embed_dim: int | None = None,
    encoder_depth: int | None = None,
    encoder_num_heads: int | None = None,
    encoder_global_attn_indexes: list[int] | None = None,
    prompt_embed_dim: int | None = None,
    image_size: int | None = None,
) -> Sam:
    """A randomly initialised SAM in eval mode: `sam_model_registry[model_type]`, or a smaller one for tests.

    Any override builds the same modules as segment_anything's builder with those values changed
    (the decoder MLP is 8x the prompt width, as 2048 = 8 x 256 in the official sizes).
    """
    if model_type not in CHECKPOINTS:
        raise CheckpointError(f"Unknown SAM size sam.model_type={model_type!r}: choose one of {sorted(CHECKPOINTS)}.")
    overrides = (
        encoder_embed_dim,
        encoder_depth,
        encoder_num_heads,
        encoder_global_attn_indexes,
        prompt_embed_dim,
        image_size,
    )
    if all(value is None for value in overrides):
        return sam_model_registry[model_type]()
    check_sam_sizes(encoder_embed_dim, encoder_depth, encoder_num_heads, prompt_embed_dim, image_size)
    official_dim, official_depth = next(size for size, name in ENCODER_SIZES.items() if name == model_type)
    depth = encoder_depth or official_depth
    # segment_anything's _build_sam fixes the prompt width (256) and input size (1024): tests need smaller ones.
    prompt_dim, size = prompt_embed_dim or 256, image_size or 1024
    global_attn = encoder_global_attn_indexes or [i for i in range(depth) if i % 4 == 3 or i == depth - 1]
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=depth,
            embed_dim=encoder_embed_dim or official_dim,
            img_size=size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=encoder_num_heads or ENCODER_HEADS[model_type],
            patch_size=16,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=list(global_attn),
            window_size=14,
            out_chans=prompt_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_dim,
            image_embedding_size=(size // 16, size // 16),
            input_image_size=(size, size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=prompt_dim, mlp_dim=8 * prompt_dim, num_heads=8),
            transformer_dim=prompt_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=prompt_dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


def load_sam(
    model_type: str = "vit_h",
    checkpoint: str | None = None,
    download: bool = False,
    random_weights: bool = False,
    sha256: str | None = None,
    **overrides: int | list[int] | None,
) -> Sam:
    """SAM of size `model_type` ("vit_b", "vit_l", "vit_h") with its official weights, frozen, in eval mode.

    The weights come from `checkpoint` (a local file), else the torch.hub cache, else the official URL when
    `download`. Official file names are checked against their pinned SHA-256, other files against `sha256` or a
    `<file>.sha256` beside them. `random_weights=True` keeps the random initialisation instead (tests, the
    offline quickstart), and sets the model's ``random_weights`` attribute. `overrides` change the architecture (see `build_sam`).

    Raises:
        CheckpointError: the file is missing, corrupt, or made for another SAM size (the message names it).
    """
    sam = build_sam(model_type, **overrides)
    if random_weights and checkpoint is None:
        sam.random_weights = True  # read by train.py, which marks the metrics as made with random weights
        return sam.requires_grad_(False)
    filename = CHECKPOINTS[model_type][0]
    path = resolve_checkpoint(
        checkpoint,
        filename,
        URL + filename,
        download,
        sha256,
        f"SAM {model_type} weights",
        "sam",
        "random_weights",
        official_sha256=dict(CHECKPOINTS.values()),
    )
    state = load_state_dict_file(path)
    check_state_dict(state, sam.state_dict(), path, hint=_size_hint(state, model_type))
    sam.load_state_dict(state)
    return sam.requires_grad_(False)


def _size_hint(state: dict[str, torch.Tensor], model_type: str) -> str:
    """'This file is a vit_l checkpoint: set sam.model_type=vit_l.' when the encoder's shape says so."""
    patch = state.get("image_encoder.patch_embed.proj.weight")
    depth = len({key.split(".")[2] for key in state if key.startswith("image_encoder.blocks.")})
    found = ENCODER_SIZES.get((patch.shape[0], depth)) if patch is not None else None
    if found is not None and found != model_type:
        return f"The file is a SAM {found} checkpoint (width {patch.shape[0]}, {depth} blocks): set sam.model_type={found}."
    return f"Pass the official {CHECKPOINTS[model_type][0]} for sam.model_type={model_type}, or set the size the file was made for."
