import pytest
from pydantic import ValidationError

from training.config import TrainConfig, load_config, parse_override, save_config


def test_defaults_are_valid():
    cfg = TrainConfig()
    assert cfg.data.source == "fashion-mnist" and cfg.model.name == "scratch-cnn"


def test_layering_defaults_yaml_overrides_dotted(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("epochs: 3\noptim:\n  lr: 0.1\n  weight_decay: 0.2\n")
    cfg = load_config(f, {"optim": {"lr": 0.01}}, ["optim.lr=0.5", "model.name=resnet18"])
    assert cfg.epochs == 3 and cfg.optim.weight_decay == 0.2
    assert cfg.optim.lr == 0.5 and cfg.model.name == "resnet18"


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(dotted=["epochs=4", "augment.mixup=0.2"])
    save_config(cfg, tmp_path / "out.yaml")
    assert load_config(tmp_path / "out.yaml") == cfg


def test_parse_override_types():
    assert parse_override("a.b=1e-3") == {"a": {"b": 1e-3}}
    assert parse_override("flag=true") == {"flag": True}
    with pytest.raises(ValueError, match="section.key=value"):
        parse_override("nonsense")


@pytest.mark.parametrize(
    "dotted",
    [["epochs=0"], ["optim.lr=-1"], ["unknown=1"], ["data.balance=maybe"], ["optim.freeze_epochs=10", "epochs=5"],
     ["name=Has Spaces"], ["optim.freeze_bn_stats=true"], ["model.name=resnet10t", "model.flip_tta=true"]],
)  # fmt: skip
def test_invalid_values_are_refused(dotted):
    with pytest.raises(ValidationError):
        load_config(dotted=dotted)


def test_train_without_a_config_on_fashion_mnist_is_the_default_recipe():
    """`python -m training train` (no flags) trains exactly what `make run` trains."""
    from training.cli import DEFAULT_RECIPE, build_parser, config_from_args

    recipe = load_config(DEFAULT_RECIPE)
    for argv in (["train"], ["train", "--data", "fashion-mnist"], ["train", "--set", "data.source=fashion-mnist"]):
        assert config_from_args(build_parser().parse_args(argv)) == recipe, argv
    with_flag = config_from_args(build_parser().parse_args(["train", "--epochs", "3"]))
    assert with_flag == recipe.model_copy(update={"epochs": 3})
    elsewhere = config_from_args(build_parser().parse_args(["train", "--data", "photos/"]))
    assert elsewhere == load_config(overrides={"data": {"source": "photos/"}})  # other data: the generic defaults
