"""The torch runtime owns its state: the CPU streaming trick against F.linear, the caller's module untouched,
two runtimes on one module independent, and decoder state that stays where the runtime keeps it."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xvlm_edge.config import LAYOUT_HEADS, get_preset
from xvlm_edge.models.bert import LMHead
from xvlm_edge.models.xvlm import XVLM
from xvlm_edge.runtime import create_runtime
from xvlm_edge.runtime.torch_backend import SKINNY_ROWS, StreamingLinear, StreamingLMHead, own_copy, stream_weights, streaming_pays

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("shape", [(3, 64), (1, 1, 64), (2, 5, 64), (SKINNY_ROWS, 64), (SKINNY_ROWS + 1, 64), (0, 64)])
@pytest.mark.parametrize("bias", [True, False])
def test_streaming_linear_equals_f_linear(shape: tuple[int, ...], bias: bool) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(64, 48, bias=bias)
    x = torch.randn(*shape)
    streamed = StreamingLinear.from_linear(linear)
    assert streamed.weight is linear.weight and streamed.bias is linear.bias  # shared, not copied
    assert set(streamed.state_dict()) == set(linear.state_dict())  # same keys
    torch.testing.assert_close(streamed(x), F.linear(x, linear.weight, linear.bias), atol=1e-6, rtol=0)


def test_streaming_lm_head_equals_lm_head() -> None:
    config = get_preset("tiny", ("caption",)).text
    torch.manual_seed(0)
    head = LMHead(config)
    embeddings = torch.randn(config.vocab_size, config.hidden_size) * 0.02  # BERT's init scale
    x = torch.randn(3, config.hidden_size)
    streamed = StreamingLMHead(head)
    assert set(streamed.state_dict()) == set(head.state_dict())
    torch.testing.assert_close(streamed(x, embeddings), head(x, embeddings), atol=1e-6, rtol=0)


def test_an_export_bakes_no_row_count(tmp_path) -> None:
    """Traced at 3 rows (the streamed path in eager), the ONNX graph is F.linear's: right at any row count."""
    from xvlm_edge.runtime.onnxruntime_backend import ort_session

    torch.manual_seed(0)
    linear = nn.Linear(32, 16)
    path = tmp_path / "streamed.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter, as export/onnx.py uses it
        torch.onnx.export(
            StreamingLinear.from_linear(linear), (torch.randn(3, 32),), str(path), input_names=["x"], output_names=["y"],
            dynamic_axes={"x": {0: "rows"}, "y": {0: "rows"}}, dynamo=False,
        )  # fmt: skip
    sess = ort_session(path, threads=1)
    for rows in (1, 3, 7, SKINNY_ROWS + 5):
        x = torch.randn(rows, 32)
        (y,) = sess.run(["y"], {"x": x.numpy()})
        torch.testing.assert_close(torch.from_numpy(y), F.linear(x, linear.weight, linear.bias), atol=1e-6, rtol=0)


def _state(module: nn.Module) -> dict:
    return {
        "types": [type(m) for m in module.modules()],
        "training": [m.training for m in module.modules()],
        "tensors": {k: v.clone() for k, v in module.state_dict().items()},
    }


def test_the_callers_module_is_never_changed() -> None:
    model = XVLM(get_preset("tiny", LAYOUT_HEADS["captioning"]))  # in training mode, as a user may hand it over
    before = _state(model)
    runtime = create_runtime(model, backend="torch", device="cpu")
    after = _state(model)
    assert after["types"] == before["types"] and StreamingLinear not in after["types"]
    assert after["training"] == before["training"]
    assert all(torch.equal(before["tensors"][k], v) for k, v in after["tensors"].items())
    ours = runtime.model
    streamed = StreamingLinear in {type(m) for m in ours.caption_decoder.modules()}
    assert streamed == runtime.info["decoder_linear"].startswith("streamed")  # whichever this CPU measured faster
    assert not ours.training
    assert ours.caption_decoder.head.bias is model.caption_decoder.head.bias  # no memory doubled
    assert ours.vision_encoder.patch_embed.proj.weight is model.vision_encoder.patch_embed.proj.weight


def test_stream_weights_swaps_only_the_copy() -> None:
    """The streamed decoder (what the runtime builds where streaming pays) shares the caller's parameters."""
    model = XVLM(get_preset("tiny", LAYOUT_HEADS["captioning"])).eval()
    ours = own_copy(model, torch.device("cpu"), torch.float32)
    stream_weights(ours.caption_decoder)
    types = {type(m) for m in ours.caption_decoder.modules()}
    assert StreamingLinear in types and StreamingLMHead in types and nn.Linear not in types
    assert StreamingLinear not in {type(m) for m in model.modules()}
    assert ours.caption_decoder.bert.encoder.layer[0].intermediate.dense.weight is model.caption_decoder.bert.encoder.layer[0].intermediate.dense.weight
    assert set(ours.state_dict()) == set(model.state_dict())


def test_streaming_choice_is_measured() -> None:
    model = XVLM(get_preset("tiny", LAYOUT_HEADS["captioning"])).eval()
    pays, timing = streaming_pays([model.caption_decoder])
    assert isinstance(pays, bool) and "ms streamed vs" in timing and "F.linear" in timing
    assert streaming_pays([]) == (False, "no decoder")
    assert "decoder_linear" not in create_runtime(XVLM(get_preset("tiny", ("itm",))).eval(), backend="torch").info


def test_own_copy_converts_without_touching_the_original() -> None:
    model = XVLM(get_preset("tiny", ("itm",))).eval()
    weight = model.text_encoder.embeddings.word_embeddings.weight
    converted = own_copy(model, torch.device("cpu"), torch.float64)
    assert converted.text_encoder.embeddings.word_embeddings.weight.dtype == torch.float64
    assert weight.dtype == torch.float32 and model.text_encoder.embeddings.word_embeddings.weight is weight


def test_two_runtimes_on_one_module_agree_with_the_plain_module() -> None:
    """Two runtimes share one module without interfering; their decode steps equal the module's own F.linear
    graph (the streamed path changes only the summation order)."""
    from xvlm_edge.graphs import build_graphs

    torch.manual_seed(0)
    model = XVLM(get_preset("tiny", LAYOUT_HEADS["captioning"])).eval()
    first, second = create_runtime(model, backend="torch"), create_runtime(model, backend="torch")
    plain = build_graphs(copy.deepcopy(model))["caption_step"]  # nn.Linear throughout
    embeds = first.vision(torch.randn(2, 3, 128, 128)).image_embeds
    prompt = torch.tensor([[101, 1037, 3861, 1997]] * 2)
    logits = []
    for runtime in (first, second):
        state = runtime.decoder("caption", embeds, torch.ones(2, embeds.shape[1], dtype=torch.long))
        logits.append(state.start(prompt, torch.arange(2)))
    assert torch.equal(logits[0], logits[1])
    with torch.no_grad():
        cross = build_graphs(model)["caption_cross_kv"](embeds)
        layers, heads, dim = first.cache_shape("caption")
        empty = torch.zeros(layers, 2, heads, 0, dim)
        ref = plain(prompt, torch.ones(2, 4, dtype=torch.long), empty, empty, *cross, torch.ones(2, embeds.shape[1], dtype=torch.long))[0]
    # fp32 summation order only: the export's parity bound, 1e-4 of the logits' scale
    assert (logits[0] - ref).abs().max() <= 1e-4 * max(1.0, float(ref.abs().max()))


def test_decoder_state_reorders_and_refuses_ungrouped_rows() -> None:
    torch.manual_seed(0)
    model = XVLM(get_preset("tiny", LAYOUT_HEADS["captioning"])).eval()
    runtime = create_runtime(model, backend="torch")
    embeds = runtime.vision(torch.randn(2, 3, 128, 128)).image_embeds
    state = runtime.decoder("caption", embeds, torch.ones(2, embeds.shape[1], dtype=torch.long))
    state.start(torch.tensor([[101, 1037]] * 2), torch.arange(2))
    state.reorder(torch.tensor([0, 0, 1, 1]))  # two beams per image, grouped
    assert state.rows == 4 and state.cache[0].shape[1] == 4 and state.cache[0].device == runtime.device
    assert state.feed(torch.tensor([[2000]] * 4)).shape == (4, model.config.text.vocab_size)
    state.reorder(torch.tensor([2, 3, 0, 1]))  # image 1's rows first: no longer grouped as the graph reads them
    with pytest.raises(ValueError, match="grouped|reads image"):
        state.feed(torch.tensor([[2000]] * 4))
