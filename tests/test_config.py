"""Typed config: YAML and key=value overrides, with errors that name the key."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from cpd.config import ConfigError, apply_overrides, from_dict, load_config, save_config, to_dict


@dataclass
class Optim:
    lr: float = 0.1
    milestones: tuple[int, ...] = (100, 201, 250)
    nesterov: bool = False


@dataclass
class Run:
    name: str = "run"
    epochs: int = 300
    resume: str | None = None
    optim: Optim = field(default_factory=Optim)


def test_overrides_convert_to_field_types():
    cfg = apply_overrides(
        Run(),
        [
            "epochs=5",
            "optim.lr=1e-3",
            "optim.milestones=[2, 4]",
            "resume=auto",
            "optim.nesterov=true",
        ],
    )
    assert cfg.epochs == 5 and cfg.optim.lr == pytest.approx(1e-3)
    assert cfg.optim.milestones == (2, 4) and cfg.resume == "auto" and cfg.optim.nesterov is True
    assert Run().epochs == 300  # the original is untouched


@pytest.mark.parametrize(
    "override,needle",
    [
        ("optim.lrr=1", "optim.lrr"),
        ("epochs=abc", "epochs"),
        ("optim.nesterov=3", "optim.nesterov"),
        ("epochs", "key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        apply_overrides(Run(), [override])


def test_yaml_round_trip_and_partial_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 0.02\nepochs: 7\n")
    cfg = load_config(Run, path, ["name=x"])
    assert (cfg.optim.lr, cfg.optim.milestones, cfg.epochs, cfg.name) == (
        0.02,
        (100, 201, 250),
        7,
        "x",
    )
    save_config(cfg, tmp_path / "out.yaml")
    assert load_config(Run, tmp_path / "out.yaml") == cfg


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  momentum: 0.9\n")
    with pytest.raises(ConfigError, match=r"c\.yaml.*optim\.momentum"):
        load_config(Run, path)


def test_from_dict_rejects_wrong_types():
    with pytest.raises(ConfigError, match="optim"):
        from_dict(Run, {"optim": 3})
    assert to_dict(from_dict(Run, {"resume": None}))["resume"] is None
