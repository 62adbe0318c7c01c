import pytest
import torch

from training.models import ModelError, ScratchCNN, build_model, model_kwargs, set_backbone_trainable, train_mode


def test_scratch_cnn_shapes():
    m = build_model("scratch-cnn", **model_kwargs("scratch-cnn", 7, 1, width=8, depth=2))
    assert isinstance(m, ScratchCNN)
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 7)


def test_a_narrower_first_block_and_the_mirror_average():
    m = build_model("scratch-cnn", **model_kwargs("scratch-cnn", 5, 1, width=8, depth=2, first_width=4, flip_tta=True))
    assert m.features[0].out_channels == 4 and m.num_features == 16
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        m.eval()
        torch.testing.assert_close(m(x), m(x.flip(3)))  # outside training, an image and its mirror answer alike
        m.train()
        assert not torch.allclose(m(x), m(x.flip(3)))  # training sees each image as it is


def test_timm_model_by_name_and_freezing():
    m = build_model("resnet10t", **model_kwargs("resnet10t", 4, 3)).eval()
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 4)
    set_backbone_trainable(m, False)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight", "fc.bias"}
    set_backbone_trainable(m, True)
    assert all(p.requires_grad for p in m.parameters())


def test_batch_norm_statistics_are_kept_when_frozen_or_asked():
    m = build_model("resnet10t", **model_kwargs("resnet10t", 4, 3))
    before = {n: b.clone() for n, b in m.named_buffers() if "running" in n}

    def stats_moved() -> bool:
        with torch.no_grad():
            m(torch.randn(4, 3, 32, 32) * 3 + 1)
        return any(not torch.equal(before[n], b) for n, b in m.named_buffers() if n in before)

    train_mode(m, keep_bn_stats=True)
    assert m.training and not stats_moved()  # dropout etc. train; every batch norm keeps its statistics
    set_backbone_trainable(m, False)
    train_mode(m)
    assert not stats_moved()  # a frozen backbone keeps them too
    set_backbone_trainable(m, True)
    train_mode(m)
    assert stats_moved()


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ModelError, match="unknown model 'resnet_nope'"):
        build_model("resnet_nope", num_classes=2)


def test_missing_weights_file(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        build_model("resnet10t", num_classes=2, weights_file=tmp_path / "nope.safetensors")


def test_scratch_has_no_pretrained_weights():
    with pytest.raises(ModelError, match="no pretrained"):
        build_model("scratch-cnn", num_classes=2, pretrained=True)
