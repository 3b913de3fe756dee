"""The device a run computes on: a GPU that PyTorch cannot use stops the run with the reason (never a silent
CPU run), and each process of a team makes its own GPU the current one."""
import os
import stat

import pytest
import torch

from conftest import ROOT, predict_args, run_script
from virnucpro import devices
from virnucpro.errors import InputError
from virnucpro.runs import Team

H100 = "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-5d2c7f0e-1b2a-4c3d-9e8f-0a1b2c3d4e5f)"


@pytest.fixture
def fake_gpu(tmp_path, monkeypatch):
    """An ``nvidia-smi`` on PATH that lists one H100 under driver 535 (CUDA 12.2), as on a cluster node."""
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / "nvidia-smi"
    script.write_text(f'#!/bin/sh\ncase "$1" in\n  -L) echo "{H100}" ;;\n  --query-gpu=driver_version) '
                      'echo "535.104.05" ;;\n  *) exit 9 ;;\nesac\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return folder


@pytest.mark.skipif(torch.version.cuda is not None, reason="the CPU-only build of torch is what this case needs")
def test_a_gpu_this_torch_cannot_use_stops_the_run_in_one_line(fake_gpu, models, tmp_path):
    args = predict_args(models, tmp_path / "out")
    del args[args.index("--device"):args.index("--device") + 2]          # the default: auto
    result = run_script("prediction.py", *args)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: --device auto: 1 NVIDIA GPU here ({H100}), but this PyTorch ({torch.__version__}) "
                      f"is a CPU-only build; install the PyTorch build for this driver ({devices.GPU_BUILDS}), or "
                      "give --device cpu to run on the CPU"]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "prediction_summary.tsv").exists()


def test_a_cuda_build_newer_than_the_driver_is_named(fake_gpu, monkeypatch, cuda_machine):
    cuda_machine(0)                                       # the CUDA runtime sees no GPU it can use
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    with pytest.raises(InputError, match=r"built for CUDA 13\.0, which NVIDIA driver 535\.104\.05 does not "
                                         r"support; install the PyTorch build for this driver"):
        devices.resolve_device("cuda")


def test_the_cpu_asked_for_by_name_runs_beside_an_unusable_gpu(fake_gpu):
    assert devices.resolve_device("cpu") == torch.device("cpu")


def test_without_a_gpu_auto_is_the_cpu(monkeypatch, tmp_path, cuda_machine):
    monkeypatch.setenv("PATH", str(tmp_path))                            # no nvidia-smi
    monkeypatch.setattr(devices.glob, "glob", lambda pattern: [])
    cuda_machine(0)
    assert devices.resolve_device("auto") == torch.device("cpu")


def test_alone_cuda_means_the_first_gpu_made_current(cuda_machine):
    """The default --device auto and --device cuda on a one-GPU machine, through torch's own set_device."""
    made_current = cuda_machine(1)
    assert Team().device("auto") == torch.device("cuda:0")
    assert Team().device("cuda") == torch.device("cuda:0")
    assert made_current == [0, 0]


def test_each_process_of_a_team_makes_its_gpu_current(cuda_machine):
    made_current = cuda_machine(4)
    assert Team(rank=3, world=4, local_rank=1).device("auto") == torch.device("cuda:1")
    assert Team().device("cuda:2") == torch.device("cuda:2")
    assert made_current == [1, 2]
    with pytest.raises(InputError, match="this machine has 4 CUDA GPUs"):
        Team().device("cuda:7")


def test_encoders_run_in_half_precision_on_a_gpu_and_in_fp32_on_the_cpu(tiny_models):
    from virnucpro.models.loaders import Encoders, default_dtype
    from virnucpro.models.pins import DNABERT_S, ESM2_3B, FASTESM2_650

    gpu, cpu = torch.device("cuda:0"), torch.device("cpu")
    assert [default_dtype(spec, gpu) for spec in (DNABERT_S, FASTESM2_650, ESM2_3B)] == \
        [torch.bfloat16, torch.float16, torch.float32]                   # ESM2-3B: the published fp32
    assert {default_dtype(spec, cpu) for spec in (DNABERT_S, FASTESM2_650, ESM2_3B)} == {torch.float32}
    folders = tiny_models["dna"], tiny_models["protein"]
    assert Encoders.choose("fastesm650", gpu, *folders).precision == {"dna": "bfloat16", "protein": "float16"}
    assert Encoders.choose("fastesm650", gpu, *folders, dna_fp32=True).precision == \
        {"dna": "float32", "protein": "float16"}
    assert Encoders.choose("fastesm650", cpu, *folders).precision == {"dna": "float32", "protein": "float32"}


def test_a_run_records_its_precision_and_resumes_only_in_it(models, tmp_path):
    import json

    import prediction

    args = predict_args(models, tmp_path / "out", input_fasta=ROOT / "data/sample.fasta")
    assert prediction.main(args) == 0
    run = json.loads((tmp_path / "out/run.json").read_text())
    assert run["settings"]["precision"] == {"dna": "float32", "protein": "float32"}
    run["settings"]["precision"]["dna"], run["status"] = "bfloat16", "running"     # as begun on a GPU
    (tmp_path / "out/run.json").write_text(json.dumps(run))
    with pytest.raises(InputError, match=r"holds a run with other settings \(precision\)"):
        prediction.main(args)


def test_tf32_is_asked_for_by_name_and_recorded(tiny_models):
    """Float32 encoders on a GPU multiply on CUDA cores unless --tf32; with it their precision is recorded
    as tf32, so that a resume or a classifier of the other precision is told apart."""
    from virnucpro.models.loaders import Encoders
    from virnucpro.precision import precision_name, use_tf32

    folders = tiny_models["dna"], tiny_models["esm2_3b"]
    gpu = torch.device("cuda:0")
    assert Encoders.choose("esm2_3b", gpu, *folders).precision == {"dna": "bfloat16", "protein": "float32"}
    assert Encoders.choose("esm2_3b", gpu, *folders, dna_fp32=True, tf32=True).precision == \
        {"dna": "tf32", "protein": "tf32"}
    assert Encoders.choose("esm2_3b", torch.device("cpu"), *folders, tf32=True).precision == \
        {"dna": "float32", "protein": "float32"}                     # the CPU has no TF32
    try:
        use_tf32(True)
        assert precision_name(torch.float32, gpu) == "tf32" and precision_name(torch.float16, gpu) == "float16"
        assert precision_name(torch.float32, torch.device("cpu")) == "float32"
    finally:
        use_tf32(False)
    assert precision_name(torch.float32, gpu) == "float32"
