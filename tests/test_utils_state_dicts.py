"""utils/state_dicts.py: why a checkpoint's weights do not fit a model, in the words of the flags."""
import torch

from utils.state_dicts import mismatch, num_blocks, width


def _state(depth: int = 2, dim: int = 8, frames: int = 4, classes: int = 3, **extra: tuple[int, ...]) -> dict:
    shapes = {"patch_embed.proj.weight": (dim, 3, 1, 16, 16), "pos_embed": (1, 5, dim),
              "temporal_pos_embedding": (1, frames, dim), "head.weight": (classes, dim), "head.bias": (classes,),
              **{f"layers.{i}.mixer.A_log": (2 * dim, 16) for i in range(depth)}, **extra}
    return {key: torch.zeros(shape) for key, shape in shapes.items()}


def test_depth_width_and_shapes_named_with_their_flags():
    assert num_blocks(_state(depth=12)) == 12 and num_blocks(["head.weight"]) == 0 and width(_state(dim=8)) == 8
    assert mismatch(_state(), _state()) is None
    assert mismatch(_state(dim=16), _state(dim=8)) == "the checkpoint is 16 wide, the model 8 (set by --model / " \
                                                       "--embed_dim)"
    assert mismatch(_state(depth=4, frames=8, classes=5), _state(depth=2)) == (
        "the checkpoint has 4 blocks, the model 2 (set by --model / --depth); temporal_pos_embedding (1, 8, 8) vs "
        "(1, 4, 8) (set by --num_frames / --tubelet_size); head.weight (5, 8) vs (3, 8), head.bias (5,) vs (3,) "
        "(set by --nb_classes)")
    saved = _state(**{"clip_decoder.0.head.weight": (4, 8)})
    model = _state(**{f"extra.{i}": (1,) for i in range(5)})
    assert mismatch(saved, model) == ("only the checkpoint has clip_decoder.0.head.weight; only the model has "
                                      "extra.0, extra.1, extra.2 and 2 more")
