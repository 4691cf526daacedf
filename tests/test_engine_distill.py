"""Attention-guided masks and the distillation task with tiny fake teacher and student."""
import pytest
import torch
from torch import nn

from engines.masking import attention_mask, with_cls_column
from engines.tasks import DistillationTask, distillation_loss
from utils.batch import MaskedBatch


def test_attention_mask_keeps_exact_visible_count_per_frame():
    torch.manual_seed(0)
    b, t, hw, ratio = 3, 4, 10, 0.7
    attn = torch.rand(b * t, hw)
    mask = attention_mask(attn, b, ratio)
    assert mask.shape == (b, t * hw) and mask.dtype == torch.bool  # patch tokens only: no cls column
    student_mask = with_cls_column(mask)
    assert student_mask.shape == (b, 1 + t * hw) and not student_mask[:, 0].any()
    assert torch.equal(student_mask[:, 1:], mask)
    per_frame_visible = (~mask).reshape(b, t, hw).sum(-1)
    assert (per_frame_visible == hw - int(hw * ratio)).all()


def test_attention_mask_samples_where_attention_is():
    b, t, hw = 2, 3, 8
    attn = torch.zeros(b * t, hw)
    attn[:, [1, 6]] = 1.0  # all attention on two patches; keep 2 -> exactly those two
    mask = attention_mask(attn, b, mask_ratio=0.75, generator=torch.Generator().manual_seed(1))
    visible = (~mask).reshape(b, t, hw)
    expected = torch.zeros(hw, dtype=torch.bool)
    expected[[1, 6]] = True
    assert (visible == expected).all()


def test_attention_mask_rejects_bad_input():
    with pytest.raises(ValueError, match="B\\*T"):
        attention_mask(torch.rand(5, 4), 2, 0.5)
    with pytest.raises(ValueError, match="no visible"):
        attention_mask(torch.rand(2, 4), 1, 1.0)


def test_distillation_losses():
    torch.manual_seed(0)
    s = nn.functional.normalize(torch.randn(2, 3, 5, 8), dim=-1)
    t = nn.functional.normalize(torch.randn(2, 3, 5, 8), dim=-1)
    cos = (s * t).sum(-1)
    assert distillation_loss(s, t, "l2").item() == pytest.approx((2 - 2 * cos).mean().item(), rel=1e-6)
    assert distillation_loss(s, s, "l2").item() == pytest.approx(0.0, abs=1e-6)
    assert distillation_loss(s, t, "mse").item() == pytest.approx(((s - t) ** 2).mean().item(), rel=1e-6)
    d = (s - t).abs()  # unit vectors: some differences below 1 (0.5·d²), some above (d − 0.5)
    assert (d < 1).any() and (d > 1).any()
    huber = torch.where(d < 1, 0.5 * d**2, d - 0.5).mean()
    assert distillation_loss(s, t, "smooth_l1").item() == pytest.approx(huber.item(), rel=1e-6)
    with pytest.raises(ValueError, match="clip_loss_type"):
        distillation_loss(s, t, "cosine")


class FakeTeacher(nn.Module):
    """Features (1, B, 1 + T·4, D) on a 2×2 patch grid at any resolution: a projection of each patch's mean
    colour; the attention favours patch 0."""

    def __init__(self, dim: int = 6) -> None:
        super().__init__()
        self.proj = nn.Linear(3, dim)
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x)
        b, c, t, h, w = x.shape
        patches = x.reshape(b, c, t, 2, h // 2, 2, w // 2).mean((4, 6)).flatten(2).transpose(1, 2)
        feats = nn.functional.normalize(self.proj(patches), dim=-1)
        cls = feats.mean(1, keepdim=True)
        attn = torch.zeros(b * t, 4)
        attn[:, 0] = 1.0
        attn[:, 1:] = 1e-3
        return torch.cat([cls, feats], 1).unsqueeze(0), attn


class FakeStudent(nn.Module):
    def __init__(self, dim: int = 6) -> None:
        super().__init__()
        self.proj = nn.Linear(3, dim)
        self.calls: list[torch.Tensor] = []

    def forward(self, x, mask):
        self.calls.append(mask)
        b, c, t, h, w = x.shape
        patches = x.reshape(b, c, t, 2, h // 2, 2, w // 2).mean((4, 6)).flatten(2).transpose(1, 2)
        tokens = torch.cat([patches.mean(1, keepdim=True), patches], 1)
        visible = tokens[~mask].reshape(b, -1, c)
        return nn.functional.normalize(self.proj(visible), dim=-1).unsqueeze(0)


def test_distillation_task_masks_resizes_and_learns():
    torch.manual_seed(0)
    teacher, student = FakeTeacher(), FakeStudent()
    task = DistillationTask(teacher, "attention", 0.5, "l2", 2.0, clip_input_resolution=16, clip_input_norm="clip",
                            align_cls=True)
    batch = MaskedBatch(video=torch.randn(2, 3, 2, 8, 8), mask=None)
    opt = torch.optim.SGD(student.parameters(), lr=0.5)
    losses = []
    for _ in range(30):
        loss, extra = task.training_loss(student, batch, torch.device("cpu"))
        assert loss.item() == pytest.approx(2.0 * extra["loss_clip"]) and extra["loss_pixel"] == 0  # ratio 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert teacher.seen[0].shape == (2, 3, 2, 16, 16)
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    mask = student.calls[0]
    assert mask.shape == (2, 1 + 2 * 4) and not mask[:, 0].any()
    assert ((~mask[:, 1:]).reshape(2, 2, 4).sum(-1) == 2).all()
    assert losses[-1] < 0.5 * losses[0]


def _task(teacher, mask_type="tube", align_cls=True):
    return DistillationTask(teacher, mask_type, 0.5, "l2", 1.0, clip_input_resolution=8, clip_input_norm="imagenet",
                            align_cls=align_cls)


def test_loader_masks_get_a_cls_column_and_shape_errors_are_clear():
    teacher = FakeTeacher()
    task = _task(teacher)
    video = torch.randn(1, 3, 2, 8, 8)
    loader_mask = torch.tensor([[True, False, True, False] * 2])
    targets, mask = task.targets_and_mask(MaskedBatch(video, loader_mask), video)
    assert torch.equal(mask, loader_mask)  # one convention: the batch's patch-token mask
    assert targets.shape == (1, 1, 5, 6)  # the teacher's cls feature, then the 4 visible patches
    feats, _ = teacher(video)
    torch.testing.assert_close(targets[0, 0, 1:], feats[0, 0, 1:][~loader_mask[0]])
    student = FakeStudent()
    task.training_loss(student, MaskedBatch(video, loader_mask), torch.device("cpu"))
    assert torch.equal(student.calls[0], with_cls_column(loader_mask))  # the cls column is added for the student
    with pytest.raises(ValueError, match="teacher returns"):
        task.targets_and_mask(MaskedBatch(video, torch.zeros(1, 12, dtype=torch.bool)), video)


class PatchTeacher(FakeTeacher):
    """FakeTeacher without the cls feature (``--clip_return_cls`` off)."""

    def forward(self, x):
        feats, attn = super().forward(x)
        return feats[:, :, 1:], attn


def test_without_teacher_cls_the_students_cls_feature_is_dropped():
    video = torch.randn(2, 3, 2, 8, 8)
    mask = torch.tensor([[True, False, True, False] * 2, [False, True, True, False] * 2])
    task = _task(PatchTeacher(), align_cls=False)
    targets, _ = task.targets_and_mask(MaskedBatch(video, mask), video)
    assert targets.shape == (1, 2, 4, 6)
    student = FakeStudent()
    student.proj = task.teacher.proj  # the same projection: the student reproduces the teacher exactly
    loss, _ = task.training_loss(student, MaskedBatch(video, mask), torch.device("cpu"))
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match=r"covers 8 patch tokens \+ cls"):  # a teacher without cls, align_cls on
        _task(PatchTeacher(), align_cls=True).targets_and_mask(MaskedBatch(video, mask), video)


def test_clip_input_norm_maps_imagenet_normalisation_to_clip_normalisation():
    pixels = torch.rand(1, 3, 2, 8, 8)  # in [0, 1]
    shape = (1, 3, 1, 1, 1)
    imagenet = (pixels - torch.tensor([0.485, 0.456, 0.406]).view(shape)) / torch.tensor(
        [0.229, 0.224, 0.225]).view(shape)
    clip = (pixels - torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(shape)) / torch.tensor(
        [0.26862954, 0.26130258, 0.27577711]).view(shape)
    renorm = DistillationTask(FakeTeacher(), "tube", 0.5, "l2", 1.0, clip_input_resolution=8, clip_input_norm="clip",
                              align_cls=True)
    keep = _task(FakeTeacher())
    torch.testing.assert_close(renorm.teacher_input(imagenet), clip, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(keep.teacher_input(imagenet), imagenet)
