"""One vocabulary: every command's parser against the shared-option table, the README's copy of
that table and of the exit statuses, and the old spellings that still work for one release."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from cpd.cli import COMMANDS, build_parser, main
from cpd.commands._options import EXIT_STATUSES, SHARED_OPTIONS
from cpd.commands._training import FLAG_KEYS

README = Path(__file__).resolve().parents[1] / "README.md"
TRAINING = ("pretrain", "finetune")
# spellings of shared things that no command may show any more (they stay as hidden aliases)
RETIRED = ("--root", "--video-dir", "--captions", "--subset", "--out-dir", "--no-progress")


def _parsers() -> dict[str, argparse.ArgumentParser]:
    """Every command's parser (bench: each of its benchmarks)."""
    out = {}
    for name in COMMANDS:
        top = build_parser([name])
        sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
        nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if nested:
            out.update({f"{name} {k}": p for k, p in nested[0].choices.items()})
        else:
            out[name] = parser
    return out


def _visible(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in parser._actions if a.help is not argparse.SUPPRESS
            for s in a.option_strings}  # fmt: skip


@pytest.mark.parametrize("command", sorted(_parsers()))
def test_shared_options_have_one_name_and_default(command: str) -> None:
    parser = _parsers()[command]
    flags = _visible(parser)
    for name, opt in SHARED_OPTIONS.items():
        present = [f for f in opt.flags if f in flags]
        if not present:
            continue
        assert present == list(opt.flags), f"{command}: {name} needs all of {opt.flags}"
        action = flags[opt.flags[-1]]
        assert action.dest == name, f"{command}: {opt.flags[-1]} stores into {action.dest}"
        if command in TRAINING and name != "quiet":
            assert action.default is None, f"{command}: {name} defaults to the config's value"
        elif opt.default is not None:
            assert action.default == opt.default, f"{command}: {name} default {action.default!r}"
    assert not set(RETIRED) & set(flags), f"{command} shows a retired spelling"


def test_every_command_that_writes_takes_out_device_and_quiet_by_those_names() -> None:
    parsers = _parsers()
    for command, parser in parsers.items():
        flags = _visible(parser)
        assert "--out" in flags, f"{command} has no -o/--out"
        if command not in ("synth", "prepare", "export", "demo", "bench load", "bench step"):
            assert flags["--device"].choices == ("auto", "cpu", "cuda") and (
                flags["--device"].default in ("auto", None)
            ), command


def test_training_flags_set_their_config_keys() -> None:
    from cpd.commands._training import flag_overrides
    from cpd.train.config import load_pretrain_config

    args = argparse.Namespace(out="runs/x", seed=3, device="cpu", batch_size=8, workers=1,
                              threads=1, video_root="v", manifest="{a}.jsonl", quiet=True)  # fmt: skip
    overrides = flag_overrides(args)
    assert set(FLAG_KEYS.values()) <= {o.partition("=")[0] for o in overrides}
    cfg = load_pretrain_config("pretrain_synthetic_cpu", overrides)
    assert (cfg.run.out, cfg.run.seed, cfg.run.device, cfg.optim.batch_size) == (
        "runs/x", 3, "cpu", 8)  # fmt: skip
    assert cfg.data.manifest == "{a}.jsonl" and cfg.run.progress is False
    defaults = load_pretrain_config(None, [])
    for name, key in FLAG_KEYS.items():  # the config's own default is the table's
        section, field = key.split(".")
        expected = SHARED_OPTIONS[name].default
        if expected is not None:
            assert getattr(getattr(defaults, section), field) == expected, key


def test_readme_tables_match_the_code() -> None:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Options every command shares") :]
    section = section[: section.index("\n## ", 5)]
    for name, opt in SHARED_OPTIONS.items():
        row = next((line for line in section.splitlines()
                    if line.startswith("| `" + ", ".join(opt.flags))), None)  # fmt: skip
        assert row is not None, f"README lacks the row of {opt.flags}"
        if opt.config_key:
            assert f"`{opt.config_key}`" in row, f"README row of {name} lacks {opt.config_key}"
        if opt.default is not None and opt.default is not False:
            assert f"`{opt.default}`" in row, f"README row of {name} lacks its default"
    for status, meaning in EXIT_STATUSES.items():
        assert re.search(rf"^\| {status} \| {re.escape(meaning)} \|$", section, re.M), status


def test_every_help_lists_the_exit_statuses(capsys: pytest.CaptureFixture[str]) -> None:
    for name in COMMANDS:
        with pytest.raises(SystemExit):
            main([name, "--help"])
        out = capsys.readouterr().out
        assert "exit status:" in out and "3  stopped by a signal" in out, name


def test_old_spellings_still_work_and_say_what_replaces_them(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def parse(*argv: str) -> argparse.Namespace:
        return build_parser([argv[0]]).parse_args(list(argv))

    args = parse("retrieval", "m", "--captions", "c.jsonl", "--root", "v", "--format", "csv")
    assert (args.manifest, args.video_root, args.manifest_format) == ("c.jsonl", "v", "csv")
    err = capsys.readouterr().err
    assert "--root is deprecated" in err and "use --video-root" in err
    args = parse("test", "m", "--dataset", "ucf101", "--split", "1", "2", "--subset", "all")
    assert (args.fold, args.split) == ([1, 2], "all")
    assert "use --fold 1 2" in capsys.readouterr().err
    args = parse("zeroshot", "m", "--dataset", "ucf101", "--split", "2")
    assert (args.fold, args.split) == (2, "test")
    args = parse("prepare", "--manifest", "x.json", "--video-dir", "raw", "-o", "o")
    assert args.video_root == "raw"
    args = parse("demo", "runs/old", "--quick")
    from cpd.commands._options import take_legacy_out

    take_legacy_out(args, "cpd demo", "runs/demo")
    assert args.out == "runs/old" and "-o/--out runs/old" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse("test", "m", "--dataset", "ucf101", "--split", "validation")


def test_renamed_config_keys_still_read(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from cpd.config import ConfigError
    from cpd.train.config import load_pretrain_config
    from cpd.train.finetune_config import load_finetune_config

    cfg = load_pretrain_config(None, ["data.root=videos", "data.format=csv"])
    assert (cfg.data.video_root, cfg.data.manifest_format) == ("videos", "csv")
    assert "data.root is deprecated" in caplog.text and "use data.video_root" in caplog.text
    old = tmp_path / "old.yaml"
    old.write_text("data:\n  split: 2\nval:\n  subset: train\n", encoding="utf-8")
    cfg = load_finetune_config(str(old), [])
    assert (cfg.data.fold, cfg.val.split) == (2, "train")
    both = tmp_path / "both.yaml"
    both.write_text("data:\n  split: 2\n  fold: 3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="data.split and data.fold are the same setting"):
        load_finetune_config(str(both), [])
