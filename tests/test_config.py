"""Typed configuration: validation messages name the key; files load; round trips; --set."""

from __future__ import annotations

import dataclasses
import json

import pytest

from vox2vox.config import DESCRIPTIONS, Config, load_config
from vox2vox.errors import Vox2VoxError


def test_defaults_follow_the_paper():
    config = Config()
    assert config.optim.lr_g == config.optim.lr_d == 2e-4
    assert (config.optim.beta1, config.optim.beta2) == (0.5, 0.999)
    assert config.loss.lambda_dice == 5.0
    assert config.train.patch_size == (128, 128, 128)
    assert config.train.batch_size == 4


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"train": {"epochz": 3}}, "epochz"),
        ({"trainer": {}}, "trainer"),
        ({"generator": {"depht": 3}}, "depht"),
    ],
)
def test_unknown_key_is_named(data, key):
    with pytest.raises(Vox2VoxError, match=key):
        Config.from_dict(data)


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"train": {"epochs": "ten"}}, "train.epochs"),
        ({"train": {"epochs": 2.5}}, "train.epochs"),
        ({"train": {"epochs": True}}, "train.epochs"),
        ({"optim": {"lr_g": "fast"}}, "optim.lr_g"),
        ({"loss": {"adversarial": "yes"}}, "loss.adversarial"),
        ({"train": {"patch_size": 64}}, "train.patch_size"),
        ({"train": {"patch_size": [64, 64]}}, "train.patch_size"),
        ({"train": {"device": "tpu"}}, "train.device"),
        ({"loss": {"class_weights": ["a", 1.0]}}, "loss.class_weights"),
        ({"train": 5}, "train"),
    ],
)
def test_wrong_type_is_named(data, key):
    with pytest.raises(Vox2VoxError, match=key.replace(".", r"\.")):
        Config.from_dict(data)


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"optim": {"lr_g": -1e-4}}, "optim.lr_g"),
        ({"optim": {"lr_d": 0}}, "optim.lr_d"),
        ({"optim": {"beta1": 1.0}}, "optim.beta1"),
        ({"train": {"epochs": 0}}, "train.epochs"),
        ({"train": {"d_accuracy_gate": 0.0}}, "train.d_accuracy_gate"),
        ({"data": {"val_fraction": 1.5}}, "data.val_fraction"),
        ({"generator": {"dropout": 1.0}}, "generator.dropout"),
    ],
)
def test_out_of_range_values_are_named(data, key):
    with pytest.raises(Vox2VoxError, match=key.replace(".", r"\.")):
        Config.from_dict(data)


def test_patch_size_must_be_a_multiple_of_2_to_depth():
    with pytest.raises(Vox2VoxError, match=r"train\.patch_size.*multiple of .*16"):
        Config.from_dict({"train": {"patch_size": [64, 64, 40]}})
    with pytest.raises(Vox2VoxError, match=r"train\.patch_size.*multiple of .*8"):
        Config.from_dict({"generator": {"depth": 3}, "train": {"patch_size": [24, 24, 20]}})
    config = Config.from_dict({"generator": {"depth": 3}, "train": {"patch_size": [24, 32, 40]}})
    assert config.train.patch_size == (24, 32, 40)


def test_patch_too_small_for_the_discriminator():
    with pytest.raises(Vox2VoxError, match=r"train\.patch_size.*discriminator"):
        Config.from_dict({"train": {"patch_size": [16, 16, 16]}, "generator": {"depth": 3}})
    # Without the adversarial part the discriminator does not constrain the patch.
    Config.from_dict({"train": {"patch_size": [32, 32, 32]}, "loss": {"adversarial": False}})


def test_to_dict_from_dict_round_trip():
    config = Config.from_dict(
        {
            "generator": {"base_filters": 8, "depth": 3, "kernel_size": 3, "in_channels": 2, "n_classes": 5},
            "loss": {"class_weights": [0.25, 45.5, 16.5, 49.1, 1.0], "dice_weighting": "fixed"},
            "train": {"patch_size": [32, 40, 48], "d_accuracy_gate": 0.8, "epochs": 3},
            "data": {"val_cases": 2},
        }
    )
    plain = config.to_dict()
    assert Config.from_dict(plain) == config
    # Through JSON text too (tuples become lists and come back as tuples).
    again = Config.from_dict(json.loads(config.to_json()))
    assert again == config
    assert again.train.patch_size == (32, 40, 48)
    assert again.loss.class_weights == (0.25, 45.5, 16.5, 49.1, 1.0)
    assert Config.from_dict(Config().to_dict()) == Config()


def test_json_and_toml_files_load(tmp_path):
    json_path = tmp_path / "run.json"
    json_path.write_text(json.dumps({"train": {"epochs": 7, "patch_size": [64, 64, 64]}, "loss": {"lambda_dice": 3}}))
    config = load_config(json_path)
    assert config.train.epochs == 7 and config.train.patch_size == (64, 64, 64)
    assert config.loss.lambda_dice == 3.0 and isinstance(config.loss.lambda_dice, float)

    toml_path = tmp_path / "run.toml"
    toml_path.write_text(
        "[train]\nepochs = 9\npatch_size = [32, 32, 32]\nd_accuracy_gate = 0.8\n\n"
        "[generator]\nbase_filters = 16\n\n[loss]\nadversarial = false\n"
    )
    config = load_config(toml_path)
    assert config.train.epochs == 9 and config.train.d_accuracy_gate == 0.8
    assert config.generator.base_filters == 16 and config.loss.adversarial is False


def test_bad_config_files_name_the_file(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(Vox2VoxError, match="nope.json"):
        load_config(missing)
    broken = tmp_path / "broken.toml"
    broken.write_text("[train\nepochs = ")
    with pytest.raises(Vox2VoxError, match="broken.toml"):
        load_config(broken)
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with pytest.raises(Vox2VoxError, match="list.json"):
        load_config(listed)
    typo = tmp_path / "typo.json"
    typo.write_text(json.dumps({"train": {"epoch": 3}}))
    with pytest.raises(Vox2VoxError, match=r"typo\.json.*epoch"):
        load_config(typo)


def test_set_overrides_parse_json_values():
    config = Config().with_overrides(
        [
            "train.patch_size=[64, 64, 32]",
            "train.d_accuracy_gate=0.8",
            "loss.adversarial=false",
            "train.epochs=12",
            "data.path=/some/where",
            "data.convention=null",
            "loss.class_weights=[1, 2.5, 3, 4]",
        ]
    )
    assert config.train.patch_size == (64, 64, 32)
    assert config.train.d_accuracy_gate == 0.8
    assert config.loss.adversarial is False
    assert config.train.epochs == 12
    assert config.data.path == "/some/where"  # not JSON: taken as a plain string
    assert config.data.convention is None
    assert config.loss.class_weights == (1.0, 2.5, 3.0, 4.0)
    back = config.with_overrides(["train.d_accuracy_gate=null", "loss.adversarial=true"])
    assert back.train.d_accuracy_gate is None and back.loss.adversarial is True


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("train.epochz=3", "train.epochz"),
        ("trainer.epochs=3", "trainer"),
        ("epochs=3", "section.key=value"),
        ("train.epochs", "section.key=value"),
        ("train.epochs=-2", "train.epochs"),
        ("train.epochs=ten", "train.epochs"),
        ("loss.adversarial=maybe", "loss.adversarial"),
    ],
)
def test_bad_overrides_name_the_key(override, fragment):
    with pytest.raises(Vox2VoxError, match=fragment.replace(".", r"\.")):
        Config().with_overrides([override])


def test_checkpoint_configs_from_other_versions_drop_unknown_keys():
    from vox2vox.config import Config

    data = Config().to_dict()
    data["augment"]["enabled"] = True  # a key an older version wrote
    with pytest.raises(Vox2VoxError, match="'augment.enabled'"):
        Config.from_dict(data)
    assert Config.from_dict(data, ignore_unknown=True) == Config()


def test_patch_too_small_for_the_generator_depth_is_a_config_error():
    from vox2vox.config import Config

    with pytest.raises(Vox2VoxError, match="deepest feature map"):
        Config().with_overrides(["train.patch_size=[16,16,16]", "loss.adversarial=false"])


def test_every_config_key_has_a_description():
    config = Config()
    keys = {f"{s.name}.{f.name}" for s in dataclasses.fields(config) for f in dataclasses.fields(getattr(config, s.name))}
    assert keys == set(DESCRIPTIONS)
    assert all(DESCRIPTIONS.values())
