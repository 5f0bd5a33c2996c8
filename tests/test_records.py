"""A cell folder's record (prefit.records): what is skipped, resumed or refused, and what names a study."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prefit import records
from prefit.config import ARITHMETIC_KEYS, RUNTIME_KEYS, Config, MetaConfig, cell_folder, study_config
from prefit.errors import ConfigError
from prefit.keys import config_diff


def study(**changes) -> dict:
    cfg = Config()
    cfg.dataset.name, cfg.dataset.path = "cifar_dir", "data/sample"
    for key, value in changes.items():
        node = cfg
        *parents, leaf = key.split("__")
        for part in parents:
            node = getattr(node, part)
        setattr(node, leaf, value)
    return study_config(cfg)


def complete_folder(tmp_path: Path, study_dict: dict) -> Path:
    out = tmp_path / "cell"
    out.mkdir(parents=True)
    (out / "psnr.parquet").write_bytes(b"parquet bytes" * 100)
    (out / "recon.npz").write_bytes(b"npz bytes" * 100)
    records.complete(out, {"study": study_dict, "cell": {"hls": 2, "hfs": 32}})
    return out


def test_runtime_and_arithmetic_keys_are_derived_from_the_schema():
    keys = set(RUNTIME_KEYS)
    assert {"train.device", "train.threads", "train.overwrite", "dataset.root", "scheme.meta.cache_dir"} <= keys
    assert not {"train.lr", "train.epochs", "train.engine", "dataset.path", "model.hfs", "seed"} & keys
    arithmetic = set(ARITHMETIC_KEYS)
    assert {"train.engine", "train.matmul_precision", "train.kernels", "train.device", "train.threads"} <= arithmetic
    assert not {"train.lr", "train.eps", "train.progress", "train.overwrite", "model.hfs", "seed"} & arithmetic


def test_the_study_leaves_out_how_a_job_runs_and_resolves_the_data_path(monkeypatch, tmp_path):
    base = study()
    assert base == study(train__device="cpu", train__threads=1, train__max_members=7, dataset__root="/x")
    assert "device" not in base["train"] and "root" not in base["dataset"] and "experiment" not in base
    monkeypatch.chdir(tmp_path)
    assert study(dataset__path=str(tmp_path / "data" / "sample")) == study()
    assert study(train__lr=2e-4) != base
    cfg = Config()
    cfg.scheme.meta = MetaConfig(cache_dir="/one")
    other = Config()
    other.scheme.meta = MetaConfig(cache_dir="/two")
    assert study_config(cfg) == study_config(other)


def test_folder_names_leave_out_runtime_keys():
    overrides = "model.hls=2,model.hfs=32,train.device=cpu,+train.threads=1,protocol=chained,train.lr=0.001"
    assert cell_folder(2, 32, overrides) == "2hls_32hfs,protocol=chained,train.lr=0.001"
    listed = "+experiment=[grid,smoke],model.hls=2,scheme=[random,meta],dataset.path=/a,hydra.launcher.n_jobs=2"
    assert cell_folder(2, 32, listed) == "2hls_32hfs,scheme=[random,meta]"


def test_complete_intact_result_is_skipped_and_a_damaged_one_is_not(tmp_path):
    out = complete_folder(tmp_path, study())
    assert records.job_action(out, study(), overwrite=False) == "skip"
    assert records.job_action(out, study(), overwrite=True) == "run"
    recon = out / "recon.npz"
    recon.write_bytes(recon.read_bytes()[:-1] + b"X")  # same size, other content
    assert records.job_action(out, study(), overwrite=False) == "run"


def test_truncated_or_missing_files_are_computed_again(tmp_path):
    out = complete_folder(tmp_path, study())
    parquet = out / "psnr.parquet"
    parquet.write_bytes(parquet.read_bytes()[:10])
    assert records.job_action(out, study(), overwrite=False) == "run"
    out2 = complete_folder(tmp_path / "b", study())
    (out2 / "recon.npz").unlink()
    assert records.job_action(out2, study(), overwrite=False) == "run"


def test_another_study_is_refused_with_the_keys_that_differ(tmp_path):
    out = complete_folder(tmp_path, study())
    with pytest.raises(ConfigError, match=r"train\.epochs.*hydra\.sweep\.dir.*train\.overwrite=true"):
        records.job_action(out, study(train__epochs=30), overwrite=False)
    assert records.job_action(out, study(train__epochs=30), overwrite=True) == "run"


def test_a_claim_left_by_a_killed_job_resumes_for_its_study_only(tmp_path):
    out = tmp_path / "cell"
    out.mkdir()
    records.claim(out, study(), "2026-01-01T00:00:00")
    (out / "psnr.parquet").write_bytes(b"a parquet of the killed job")
    assert records.job_action(out, study(), overwrite=False) == "run"
    with pytest.raises(ConfigError, match="seed"):
        records.job_action(out, study(seed=1), overwrite=False)


def test_leftover_temporary_files_are_removed_and_an_unreadable_record_refused(tmp_path):
    out = tmp_path / "cell"
    out.mkdir()
    (out / ".psnr.parquet.x1.tmp").write_bytes(b"half")
    assert records.job_action(out, study(), overwrite=False) == "run"
    assert not list(out.glob(".*.tmp"))
    (out / "run.json").write_text('{"status": "compl')
    with pytest.raises(ConfigError, match="unreadable"):
        records.job_action(out, study(), overwrite=False)


def test_records_of_earlier_versions_compare_on_what_changes_results(tmp_path):
    """Earlier run.json files kept dataset.root and a relative dataset.path in their study; they name the same
    study, though without file hashes they are computed again rather than trusted."""
    old = json.loads(json.dumps(study()))
    old["dataset"]["root"] = "/old/cache"
    old["dataset"]["path"] = "data/sample"
    out = tmp_path / "cell"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"status": "complete", "study": old}))
    assert records.job_action(out, study(), overwrite=False) == "run"


def test_config_diff_is_dotted_and_sorted_and_reads_null_as_absent():
    assert config_diff({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"b": 1, "c": 4}, "e": 5}) == ["a.c", "d", "e"]
    assert config_diff({"a": {"b": None, "x": 1}, "c": None}, {"a": {"x": 1}}) == []
    assert config_diff({"s": {"random": {}}}, {"s": {"random": None}}) == ["s.random"]  # selected vs not


def test_a_record_written_before_a_field_existed_still_names_the_same_study(tmp_path):
    """dataset.resolution came after the first sweeps: their run.json lacks it, the study now holds it as null.
    Such a result is still this study's (skipped when intact); a real value there is another study."""
    old = json.loads(json.dumps(study()))
    del old["dataset"]["resolution"]
    out = complete_folder(tmp_path, old)
    assert records.job_action(out, study(), overwrite=False) == "skip"
    with pytest.raises(ConfigError, match="dataset.resolution"):
        records.job_action(out, study(dataset__resolution=32), overwrite=False)
