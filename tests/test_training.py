"""The training loop: recipes, LR schedule, a 2-process gloo DDP run, and exact kill/resume on CPU.

Runs are subprocesses on a 96-scene synthetic set and the `tiny` preset at 64 pixels (3.5M parameters), so a
step takes well under a second. Kill/resume compares the JSON-lines loss records of an uninterrupted run with
those of a run that was SIGKILLed (at a step boundary, during the model save, and half-way through writing the
training state) and resumed: they must be equal, float for float.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from training import train as T
from xvlm_edge.config import get_preset
from xvlm_edge.errors import CheckpointError
from xvlm_edge.models.xvlm import XVLM

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--model.image_res=64", "--batch_size=8", "--region_batch_size=4", "--optim.warmup_steps=2",
         "--optim.lr=1e-3", "--threads=1", "--progress=false", "--log_every=1"]  # fmt: skip


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.synthetic import generate

    return generate(tmp_path_factory.mktemp("synth"), 96, seed=0)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != T.FAULT_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def _train(synth: Path, out: Path, *args: str, fault: str | None = None, nproc: int = 1) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "training.train"]
    if nproc > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                    "--master_port", str(29500 + os.getpid() % 1000), "-m", "training.train"]  # fmt: skip
    env = _env()
    if fault:
        env[T.FAULT_ENV] = fault
    cmd = [*launcher, f"--data.train_dir={synth}", f"--out={out}", *SMALL, *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _losses(out: Path) -> list[dict]:
    records = [json.loads(line) for line in (out / T.METRICS_FILE).read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in records]


# -- recipes and schedule ---------------------------------------------------------------------------------


def test_recipe_loads_and_rejects_unknown_keys(tmp_path: Path) -> None:
    recipe = T.load_recipe(str(REPO / "training/recipes/tiny_synthetic.yaml"), ["--optim.lr=3e-4", "--data.regions="])
    assert recipe.optim.lr == 3e-4 and recipe.data.regions == ()
    ablation = T.load_recipe(str(REPO / "training/recipes/tiny_synthetic_no_regions.yaml"), [])
    assert ablation.data.regions == () and ablation.loss.bbox == 0 and ablation.loss.giou == 0
    attend = T.load_recipe(str(REPO / "training/recipes/tiny_synthetic.yaml"), ["--model.box_head=attend"])
    assert T.model_config(attend, vocab_size=50).box_head == "attend"
    with pytest.raises(CheckpointError, match="unknown box_head"):
        T.model_config(T.load_recipe(None, ["--model.box_head=mlp"]), vocab_size=50)
    with pytest.raises(SystemExit, match="unknown key"):
        T.load_recipe(None, ["--optim.lrr=1"])
    with pytest.raises(SystemExit, match="must be int"):
        T.load_recipe(None, ["--steps=many"])
    with pytest.raises(SystemExit, match="--key=value"):
        T.load_recipe(None, ["steps=3"])


def test_lr_is_a_pure_function_of_step() -> None:
    optim = T.OptimRecipe(lr=1.0, warmup_steps=10, schedule="linear")
    assert [T.get_lr(s, optim, 110) for s in (0, 5, 10, 60, 110)] == [0.0, 0.5, 1.0, 0.5, 0.0]
    cosine = T.OptimRecipe(lr=1.0, warmup_steps=0, schedule="cosine", min_lr_ratio=0.1)
    assert T.get_lr(0, cosine, 100) == pytest.approx(1.0) and T.get_lr(100, cosine, 100) == pytest.approx(0.1)


def test_optimizer_groups_follow_the_official_split() -> None:
    config = T.model_config(T.TrainRecipe(), vocab_size=50)
    model = T.XVLM(config)
    optimizer = T.build_optimizer(model, T.OptimRecipe(lr=1.0, weight_decay=0.01, lr_mult=2.0))
    names = {id(p): n for n, p in model.named_parameters()}
    by_group = [{names[id(p)] for p in g["params"]} for g in optimizer.param_groups]
    assert "text_encoder.embeddings.word_embeddings.weight" in by_group[0]  # decay, base lr
    assert "text_encoder.embeddings.LayerNorm.weight" in by_group[1]  # no decay, base lr
    assert "itm_head.0.weight" in by_group[2] and optimizer.param_groups[2]["lr_scale"] == 2.0
    assert "itm_head.0.bias" in by_group[3] and optimizer.param_groups[3]["weight_decay"] == 0.0
    assert sum(len(g) for g in by_group) == len(names)


def test_temperature_is_clamped_to_the_official_range() -> None:
    model = XVLM(get_preset("tiny"))
    for value, expected in ((2.0, T.TEMP_RANGE[1]), (1e-5, T.TEMP_RANGE[0]), (0.07, 0.07)):
        model.temp.data.fill_(value)
        T.clamp_temperature(model)
        assert model.temp.item() == pytest.approx(expected)


def test_a_run_starts_from_an_earlier_stages_matching_weights(tmp_path: Path) -> None:
    from training.synthetic import build_vocab
    from xvlm_edge.checkpoint import Checkpoint, save
    from xvlm_edge.tokenizer import Tokenizer

    config = T.model_config(T.TrainRecipe(), vocab_size=len(build_vocab()))
    earlier = XVLM(config)
    T.init_weights(earlier, 0.2)
    save(Checkpoint(earlier, Tokenizer(build_vocab(), source="synthetic"), config), tmp_path / "stage1")
    model = XVLM(dataclasses.replace(config, heads=(*config.heads, "caption")))  # a head the earlier stage lacks
    T.init_weights(model, 0.02)
    T.start_from(model, str(tmp_path / "stage1"))
    earlier_state = earlier.state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(value, earlier_state[name]) if name in earlier_state else not name.startswith("vision_encoder")
    with pytest.raises(SystemExit, match="no weight"):
        T.start_from(torch.nn.Linear(3, 3), str(tmp_path / "stage1"))  # nothing in common
    with pytest.raises(SystemExit, match="no checkpoint there"):
        T.start_from(model, str(tmp_path / "stage0"))  # the earlier stage has not run


def test_atomic_save_never_exposes_a_partial_file(tmp_path: Path) -> None:
    path = tmp_path / "state.pt"
    T.atomic_torch_save({"step": 1, "w": torch.arange(4)}, path, step=1)
    assert torch.load(path, weights_only=True)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]  # no temp file left behind


# -- runs -------------------------------------------------------------------------------------------------


def test_two_process_gloo_run(synth: Path, tmp_path: Path) -> None:
    """torchrun, 2 ranks: losses finite, weights bit-identical across ranks at every checkpoint (checked in-run)."""
    out = tmp_path / "ddp"
    result = _train(synth, out, "--steps=4", "--ckpt_every=2", nproc=2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "world 2, batch 8 = 2 ranks x 1 accum x 4 images" in result.stderr
    records = _losses(out)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(isinstance(v, float) for r in records for k, v in r.items() if k != "step")
    state = T.load_state(out)
    assert state["world_size"] == 2 and len(state["rng"]) == 2 and state["step"] == 4
    assert (out / "model" / "model.safetensors").is_file()


def test_gradient_accumulation_keeps_the_global_batch(synth: Path, tmp_path: Path) -> None:
    out = tmp_path / "accum"
    result = _train(synth, out, "--steps=2", "--micro_batch_size=4", "--ckpt_every=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "batch 8 = 1 ranks x 2 accum x 4 images" in result.stderr


@pytest.fixture(scope="module")
def reference_out(synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reference")
    result = _train(synth, out, "--steps=6", "--ckpt_every=2")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def reference_run(reference_out: Path) -> list[dict]:
    records = _losses(reference_out)
    assert len(records) == 6 and any("region_bbox" in r for r in records)
    return records


def test_evaluate_reports_every_metric(reference_out: Path, synth: Path) -> None:
    from training import evaluate

    result = evaluate.evaluate(reference_out / "model", [synth], num_scenes=12, k_test=4, threads=1)["sets"][synth.name]
    retrieval, grounding, check = result["retrieval"], result["grounding"], result["check"]
    assert retrieval["gallery"] == 12 and 0 <= retrieval["img_r1"] <= retrieval["img_r5"] <= 1
    assert 0 <= retrieval["txt_r1"] <= retrieval["txt_r5"] <= 1
    assert retrieval["img_r1"] <= retrieval["img_r1_same_text"] and 0 < retrieval["r1_ceiling"] <= 1
    assert grounding["phrases"] > 12 and 0 <= grounding["acc_iou50"] <= 1
    images = {r["image"] for r in evaluate.read_jsonl(synth / "captions.jsonl")[:12]}
    statements = [r for r in evaluate.read_jsonl(synth / "check.jsonl") if r["image"] in images]
    assert check["statements"] == len(statements) and sum(c["statements"] for c in check["by_kind"].values()) == len(statements)
    assert 0 <= check["accuracy"] <= 1 and 0 <= check["balanced_accuracy"] <= 1
    assert "skipped" in result["caption"] and "skipped" in result["vqa"]  # a pretraining checkpoint


def test_evaluation_is_what_model_check_serves(reference_out: Path, synth: Path) -> None:
    """The check figure is the served verdicts' (p >= threshold on `Model.match`), statement for statement."""
    import xvlm_edge
    from training import evaluate

    api = xvlm_edge.load(reference_out / "model", threads=1)
    first = evaluate.read_jsonl(synth / "captions.jsonl")[0]["image"]
    records = [r for r in evaluate.read_jsonl(synth / "check.jsonl") if r["image"] == first]
    probs = api.match(str(synth / first), [r["statement"] for r in records])
    right = [(p >= api.config.check_threshold) == r["label"] for p, r in zip(probs, records)]
    assert evaluate.check_accuracy(api, synth, {first: records})["accuracy"] == pytest.approx(sum(right) / len(right))


def test_caption_faithfulness_counts_only_pairs_in_the_scene() -> None:
    from training.evaluate import faithfulness, named_pairs

    assert named_pairs("Two red circles and a blue star.") == {("red", "circle"), ("blue", "star")}
    scene = {"objects": [{"color": "red", "shape": "circle"}, {"color": "blue", "shape": "star"}]}
    captions = ["two red circles and a blue star", "a red star", "three shapes on a plain background"]
    assert faithfulness(captions, [scene] * 3) == {"faithful": pytest.approx(2 / 3), "names_a_pair": pytest.approx(2 / 3)}


def test_vqa_exact_match_by_type() -> None:
    from training.evaluate import exact_match_by_type

    by_type = exact_match_by_type([True, False, True, True], ["count", "count", "colour", "count"])
    assert by_type == {"colour": {"exact_match": 1.0, "questions": 1}, "count": {"exact_match": 2 / 3, "questions": 3}}


def test_same_text_r1_counts_a_top_item_that_shares_the_text() -> None:
    from training.evaluate import same_text_r1

    texts = ["three green stars", "a red circle", "three green stars"]
    scores = torch.tensor([[0.1, 0.2, 0.9], [0.8, 0.5, 0.1], [0.0, 0.1, 0.7]])  # row 0 picks scene 2: same text
    assert same_text_r1(scores, texts) == pytest.approx(2 / 3)  # row 1 picks scene 0: another text


def test_caption_metrics_use_pycocoevalcap() -> None:
    pytest.importorskip("pycocoevalcap")
    from training.evaluate import caption_metrics

    refs = [["a red circle and a blue square", "one red circle"], ["three green stars", "green stars"]]
    perfect = caption_metrics(["a red circle and a blue square", "three green stars"], refs)
    wrong = caption_metrics(["a blue square", "two red circles"], refs)
    assert perfect["bleu4"] > 0.99 and perfect["cider_d"] > wrong["cider_d"] and wrong["bleu4"] < 0.1


@pytest.mark.parametrize("fault", ["model:4", "state:4"])
def test_kill_during_checkpoint_resumes_bit_identically(synth: Path, tmp_path: Path, reference_run: list[dict], fault: str) -> None:
    out = tmp_path / "killed"
    killed = _train(synth, out, "--steps=6", "--ckpt_every=2", fault=fault)
    assert killed.returncode == -signal.SIGKILL
    assert T.load_state(out)["step"] == 2  # the interrupted save committed nothing
    resumed = _train(synth, out, "--steps=6", "--ckpt_every=2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr and "step 2" in resumed.stderr
    assert _losses(out) == reference_run
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # stale temp files were cleared


@pytest.mark.slow
def test_kill_at_a_random_moment_resumes_bit_identically(synth: Path, tmp_path: Path, reference_run: list[dict]) -> None:
    """SIGKILL from outside as soon as the step-2 checkpoint is committed, mid-way through later steps."""
    out = tmp_path / "sigkill"
    env = _env()
    cmd = [sys.executable, "-m", "training.train", f"--data.train_dir={synth}", f"--out={out}", *SMALL,
           "--steps=6", "--ckpt_every=2"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (out / T.STATE_FILE).exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert T.load_state(out)["step"] in (2, 4, 6)
    resumed = _train(synth, out, "--steps=6", "--ckpt_every=2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _losses(out) == reference_run


# -- multi-task: captioning, VQA and check on the image-text batches ------------------------------------------

SCENE_TASKS = ["--model.heads=itc,itm,mlm,bbox,caption,vqa", "--data.vqa=vqa.jsonl", "--data.check=check.jsonl",
               "--loss.caption=1", "--loss.vqa=1", "--loss.check=1"]  # fmt: skip


def test_multi_task_run_kills_and_resumes_bit_identically_and_calibrates_check(synth: Path, tmp_path: Path) -> None:
    """Every batch kind (region, image-text + caption/VQA/check) trains; kill/resume is exact; the threshold lands."""
    calibrate = [f"--data.calibration_dir={synth}", "--data.calibration_scenes=12"]
    reference = tmp_path / "reference"
    result = _train(synth, reference, "--steps=4", "--ckpt_every=2", *SCENE_TASKS, *calibrate)
    assert result.returncode == 0, result.stderr[-3000:]
    records = _losses(reference)
    assert all({"image_caption", "image_vqa", "image_check", "image_itc"} <= set(r) for r in records)
    assert any("region_bbox" in r for r in records)
    config = json.loads((reference / "model" / "config.json").read_text())
    assert set(config["heads"]) == {"itc", "itm", "mlm", "bbox", "caption", "vqa"}
    assert 0.0 < config["check_threshold"] < 1.0 and "check_threshold" in result.stderr

    out = tmp_path / "killed"
    killed = _train(synth, out, "--steps=4", "--ckpt_every=2", *SCENE_TASKS, *calibrate, fault="state:4")
    assert killed.returncode == -signal.SIGKILL and T.load_state(out)["step"] == 2
    resumed = _train(synth, out, "--steps=4", "--ckpt_every=2", *SCENE_TASKS, *calibrate)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _losses(out) == records
    assert json.loads((out / "model" / "config.json").read_text()) == config


def test_calibrated_threshold_is_the_best_cut(reference_out: Path, synth: Path) -> None:
    import xvlm_edge
    from training import evaluate

    api = xvlm_edge.load(reference_out / "model", threads=1)
    probs, labels = evaluate.check_probabilities(api, synth, num_scenes=12)
    threshold, accuracy = evaluate.calibrate_check_threshold(api, synth, num_scenes=12)
    images = {r["image"] for r in evaluate.read_jsonl(synth / "captions.jsonl")[:12]}
    assert len(probs) == sum(r["image"] in images for r in evaluate.read_jsonl(synth / "check.jsonl"))
    assert accuracy == pytest.approx(float(((probs >= threshold) == labels).double().mean()))  # the served comparison
    for cut in [0.0, 0.5, 1.0, *probs.tolist()]:  # no other cut does better
        assert float(((probs >= cut) == labels).double().mean()) <= accuracy + 1e-12


# -- export of the finished model -----------------------------------------------------------------------------


def test_a_bad_export_option_fails_before_training(synth: Path, tmp_path: Path) -> None:
    result = _train(synth, tmp_path / "bad", "--steps=2", "--export", "int4")
    assert result.returncode != 0 and "--export must be int8 or fp32, not 'int4'" in result.stderr
    assert not (tmp_path / "bad").exists()  # nothing was trained or written


def test_a_finished_run_leaves_an_onnx_export(synth: Path, tmp_path: Path) -> None:
    """`--export fp32`: the final model's ONNX Runtime export, parity-checked against torch, beside the model."""
    out = tmp_path / "exported"
    result = _train(synth, out, "--steps=2", "--ckpt_every=2", "--export", "fp32")
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((out / "model" / "export" / "onnxruntime-fp32" / "manifest.json").read_text())
    assert set(manifest["graphs"]) >= {"vision", "text", "fusion"}
    assert all(v["max_abs"] <= 1e-4 for v in manifest["parity"]["fp32_vs_torch"].values())
