import pytest

from medsam3.config import UPSTREAM_TARGET_MODULES, ConfigError, load_config
from tests.conftest import FULL_CONFIG


def test_shipped_config_has_medsam3_v1_values():
    cfg = load_config(FULL_CONFIG)
    assert (cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout) == (16, 32.0, 0.1)
    assert tuple(cfg.lora.target_modules) == UPSTREAM_TARGET_MODULES
    assert all(
        getattr(cfg.lora, f"apply_to_{c}")
        for c in ("vision_encoder", "text_encoder", "geometry_encoder", "detr_encoder", "detr_decoder", "mask_decoder")
    )
    # PyYAML reads "5e-5" as a string; upstream configs are written that way and must load as numbers.
    assert cfg.training.learning_rate == pytest.approx(5e-5)
    assert cfg.training.adam_epsilon == pytest.approx(1e-8)


def test_dotted_overrides_are_typed_and_validated():
    cfg = load_config(FULL_CONFIG, ["training.learning_rate=1e-4", "lora.rank=8", "model.lora_weights=none"])
    assert cfg.training.learning_rate == pytest.approx(1e-4)
    assert cfg.lora.rank == 8
    assert cfg.model.lora_weights == "none"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("lora:\n  rnak: 8\n", "lora.rnak: unknown key; did you mean 'lora.rank'?"),
        ("trainig:\n  batch_size: 2\n", "trainig: unknown key; did you mean 'training'?"),
        ("lora:\n  rank: eight\n", "lora.rank: expected integer, got 'eight'"),
        ("training:\n  batch_size: 2.5\n", "training.batch_size: expected integer"),
        ("lora:\n  dropout: 1.5\n", "lora.dropout: 1.5 is out of range, must be <= 1.0"),
        ("lora:\n  rank: 0\n", "lora.rank: 0 is out of range, must be >= 1"),
        ("training:\n  lr_scheduler: cosin\n", "training.lr_scheduler: expected one of 'cosine', 'linear', 'constant'"),
        ("lora:\n  apply_to_mask_decoder: yes please\n", "lora.apply_to_mask_decoder: expected true/false"),
        ("model:\n  resolution: 500\n", "must be a multiple of the patch size 14"),
        ("lora: [1, 2]\n", "'lora' must be a mapping"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value)
    assert expected in str(err.value)


@pytest.mark.parametrize("text", ["- model\n- lora\n", "42\n", "just a sentence\n"])
@pytest.mark.parametrize("overrides", [[], ["lora.rank=8"]])
def test_a_config_that_is_not_a_mapping_is_an_error_with_or_without_set(tmp_path, text, overrides):
    path = tmp_path / "notamapping.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="the top level must be a mapping") as err:
        load_config(path, overrides)
    assert str(path) in str(err.value)


def test_an_empty_config_file_means_the_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing yet\n")
    assert load_config(path, ["lora.rank=8"]).lora.rank == 8


def test_bad_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'training.batch_size'"):
        load_config(FULL_CONFIG, ["training.batchsize=4"])
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_config(FULL_CONFIG, ["lora.rank"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("lora: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)


def test_defaults_without_a_file():
    cfg = load_config(None)
    assert cfg.model.name == "facebook/sam3"
    assert cfg.to_dict()["lora"]["rank"] == 16


def test_training_sections_added_for_the_trainer():
    cfg = load_config(FULL_CONFIG)
    assert cfg.augmentation.scale_range == [1.0, 1.0] and cfg.augmentation.hflip_prob == 0.0
    assert (cfg.loss.loss_ce, cfg.loss.loss_presence, cfg.loss.loss_mask, cfg.loss.loss_dice) == (20, 20, 200, 10)
    assert cfg.training.train_base_model is False and cfg.training.max_steps is None
    cfg = load_config(
        FULL_CONFIG,
        [
            "augmentation.scale_range=[0.8, 1.2]",
            "loss.loss_presence=50",
            "training.train_annotation_file=ann.json",
            "training.max_steps=10",
        ],
    )
    assert cfg.augmentation.scale_range == [0.8, 1.2] and cfg.loss.loss_presence == 50.0
    with pytest.raises(ConfigError, match="augmentation.scale_range"):
        load_config(FULL_CONFIG, ["augmentation.scale_range=[1.2, 0.8]"])
    with pytest.raises(ConfigError, match="loss.loss_dice.*out of range"):
        load_config(FULL_CONFIG, ["loss.loss_dice=-1"])
    with pytest.raises(ConfigError, match="did you mean 'augmentation.hflip_prob'"):
        load_config(FULL_CONFIG, ["augmentation.hflip=0.5"])
