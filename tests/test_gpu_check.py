"""``benchmarks/gpu_check.py`` as a smoke run on the CPU (``--device cpu --quick``): every part runs and reports."""
import importlib.util
import json
import sys

import pytest
import torch

from conftest import ROOT


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_quick_cpu_run_reports_every_part(gpu_check, tmp_path):
    report = gpu_check.main(["--device", "cpu", "--quick", "--modes", "eager,cudagraphs", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert saved["environment"]["device"] == "cpu" and saved["quick"] is True
    assert "tests" not in saved  # the CUDA tests run on a CUDA device only
    model = saved["model"]["eager"]
    assert model["transitions"] == 1_000 * 5 and model["transitions_per_s"] > 0
    for name in ("sac", "awac", "combo", "awac5_critic", "iql5"):
        assert saved["updates"][name]["eager"]["updates_per_s"] > 0, saved["updates"][name]
        assert saved["updates"][name]["cudagraphs"] == "CUDA only"
    assert saved["fit"]["seconds_per_epoch"] > 0
    mopo = report["projections"]["mopo_1m_steps"]
    # the projection is its two parts, each from the measured figures
    expected_updates = 1_000_000 * saved["updates"]["sac"]["eager"]["ms_per_update"] / 1e3 / 60
    assert mopo["updates_min"] == pytest.approx(expected_updates)
    assert mopo["minutes"] == pytest.approx(mopo["updates_min"] + mopo["rollouts_min"])
    o3f = report["projections"]["o3f_critic_utd20_10k_env_steps"]  # issue 29: 10k env steps x 20 critic steps
    assert o3f["minutes"] == pytest.approx(10_000 * 20 * saved["updates"]["awac5_critic"]["eager"]["ms_per_update"]
                                           / 1e3 / 60)
    table = (tmp_path / "gpu_check.md").read_text()
    assert "SAC updates/s" in table and "quick smoke run" in table


def test_bad_arguments_are_clear_errors(gpu_check, tmp_path, capsys):
    for argv, expected in ((["--modes", "eager,fast"], "--modes: unknown ['fast']"),
                           (["--learners", "td3"], "--learners: unknown ['td3']")):
        with pytest.raises(SystemExit):
            gpu_check.main([*argv, "--device", "cpu", "--out", str(tmp_path)])
        assert expected in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            gpu_check.main(["--device", "cuda", "--out", str(tmp_path)])
        assert "--device: device 'cuda' was asked for" in capsys.readouterr().err
