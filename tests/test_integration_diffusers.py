"""apply_monarch_attention on a tiny random diffusers WanTransformer3DModel (CPU, reference backend).

Precision note: Wan's blocks add the attention output to the residual stream in float32
(``hidden_states.float() + attn_output * gate``), even for a float64 model. So the attention outputs
are compared to float64 rounding, and the whole model's output to float32 rounding of that stream.
"""

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffusers import FlowMatchEulerDiscreteScheduler, WanTransformer3DModel  # noqa: E402

import monarchrt_ops.integrations.diffusers as integ  # noqa: E402
from monarchrt_ops.integrations.diffusers import apply_monarch_attention  # noqa: E402

NH, HEAD_DIM, TEXT = 2, 12, 16


def tiny_wan(layers=2, seed=0):
    torch.manual_seed(seed)
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=NH, attention_head_dim=HEAD_DIM, in_channels=4, out_channels=4,
        text_dim=TEXT, freq_dim=16, ffn_dim=32, num_layers=layers, rope_max_seq_len=32,
    )  # fmt: skip
    return model.double().eval()


def inputs(frames=3, height=8, width=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(1, 4, frames, height, width, generator=g, dtype=torch.float64)
    text = torch.randn(1, 5, TEXT, generator=g, dtype=torch.float64)
    return latent, torch.tensor([500.0]), text


def run(model, latent, t, text):
    with torch.no_grad():
        return model(latent, t, text, return_dict=False)[0]


def attn1_outputs(model, latent, t, text):
    outs = []
    hooks = [b.attn1.register_forward_hook(lambda m, a, o: outs.append(o)) for b in model.blocks]
    try:
        final = run(model, latent, t, text)
    finally:
        for h in hooks:
            h.remove()
    return outs, final


def assert_float32_stream_close(out, ref):
    torch.testing.assert_close(out, ref, rtol=2e-6, atol=2e-6)  # float32 residual stream (module docstring)


def test_one_column_per_tile_equals_dense():
    """b2 = 1 (w_reduce = W) makes Monarch attention exactly dense softmax attention."""
    model = tiny_wan()
    x = inputs()  # grid 3 x 4 x 6
    dense_attn, dense_out = attn1_outputs(model, *x)
    handle = apply_monarch_attention(model, w_reduce=6, backend="reference")
    monarch_attn, monarch_out = attn1_outputs(model, *x)
    assert handle.grid == (3, 4, 6)
    for got, want in zip(monarch_attn, dense_attn, strict=True):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=0, atol=1e-13)
    assert_float32_stream_close(monarch_out, dense_out)
    handle.remove()
    # b2 > 1 is a different (structured) attention: the processor really runs Monarch attention.
    handle = apply_monarch_attention(model, w_reduce=2, backend="reference")
    other_attn, other_out = attn1_outputs(model, *x)
    assert torch.isfinite(other_out).all()
    assert (other_attn[0] - dense_attn[0]).abs().max() > 1e-3
    handle.remove()


def test_remove_restores_the_model_bit_for_bit():
    model = tiny_wan()
    x = inputs()
    before = run(model, *x)
    processors = {n: p for n, p in model.attn_processors.items()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    hooks_before = dict(model._forward_pre_hooks)
    handle = apply_monarch_attention(model, w_reduce=2)
    assert set(handle.processors) == {f"blocks.{i}.attn1" for i in range(2)}
    assert all(
        isinstance(model.blocks[i].attn2.processor, type(processors["blocks.0.attn2.processor"])) for i in range(2)
    )
    assert not torch.equal(run(model, *x), before)
    handle.remove()
    handle.remove()  # idempotent
    assert all(model.attn_processors[n] is p for n, p in processors.items())
    assert dict(model._forward_pre_hooks) == hooks_before
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert torch.equal(run(model, *x), before)


def test_fused_qkv_projections_match_separate_ones():
    model = tiny_wan()
    x = inputs()
    with apply_monarch_attention(model, w_reduce=2):
        separate, _ = attn1_outputs(model, *x)
    model.fuse_qkv_projections()
    assert model.blocks[0].attn1.fused_projections
    with apply_monarch_attention(model, w_reduce=2):
        fused, _ = attn1_outputs(model, *x)
    for a, b in zip(fused, separate, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-13)


def test_resolution_change_between_calls():
    """The grid comes from each forward's latent: W = 1 (dense-exact) and W = 6 (Monarch), interleaved."""
    model = tiny_wan()
    narrow, wide = inputs(frames=2, height=8, width=2, seed=2), inputs(frames=3, height=8, width=12, seed=3)
    dense_narrow, _ = attn1_outputs(model, *narrow)
    handle = apply_monarch_attention(model, h_reduce=2, w_reduce=1, backend="reference")
    first_wide = run(model, *wide)
    assert handle.grid == (3, 4, 6)
    got_narrow, _ = attn1_outputs(model, *narrow)
    assert handle.grid == (2, 4, 1)
    for got, want in zip(got_narrow, dense_narrow, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-13)
    assert torch.equal(run(model, *wide), first_wide)
    handle.remove()


def test_dense_layers_keep_the_original_processor():
    model = tiny_wan()
    x = inputs()
    dense_attn, _ = attn1_outputs(model, *x)
    with apply_monarch_attention(model, w_reduce=2, dense_layers=(0,)):
        got, _ = attn1_outputs(model, *x)
    assert torch.equal(got[0], dense_attn[0])
    assert (got[1] - dense_attn[1]).abs().max() > 1e-3


def test_pipeline_call_with_dense_steps(monkeypatch):
    pytest.importorskip("transformers")
    from diffusers import WanPipeline

    model = tiny_wan()
    pipe = WanPipeline(
        tokenizer=None, text_encoder=None, vae=None, transformer=model,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    text = torch.randn(1, 5, TEXT, dtype=torch.float64, generator=torch.Generator().manual_seed(4))

    def call():
        return pipe(
            prompt_embeds=text, negative_prompt_embeds=-text, height=32, width=64, num_frames=5,
            num_inference_steps=4, guidance_scale=2.0, output_type="latent",
            generator=torch.Generator().manual_seed(0),
        ).frames  # fmt: skip

    dense = call()
    handle = apply_monarch_attention(model, w_reduce=2, dense_steps=2)
    steps = []
    real = integ._monarch_attention
    monkeypatch.setattr(integ, "_monarch_attention", lambda *a, **kw: steps.append(handle.step) or real(*a, **kw))
    first = call()
    # 4 steps x (cond + uncond) x 2 layers; Monarch only from step 2 on.
    assert steps == [2] * 4 + [3] * 4
    assert torch.isfinite(first).all() and not torch.equal(first, dense)
    steps.clear()
    assert torch.equal(call(), first)  # the counter restarted for the second call
    assert steps == [2] * 4 + [3] * 4
    handle.remove()
    with apply_monarch_attention(model, w_reduce=2, dense_steps=4):
        assert torch.equal(call(), dense)


def test_fullgraph_compile_and_resolution_change():
    model = tiny_wan()
    x, y = inputs(), inputs(frames=2, height=4, width=8, seed=5)
    handle = apply_monarch_attention(model, w_reduce=2, backend="reference")
    eager_x, eager_y = run(model, *x), run(model, *y)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(run(compiled, *x), eager_x, rtol=0, atol=1e-12)
    torch.testing.assert_close(run(compiled, *y), eager_y, rtol=0, atol=1e-12)
    assert handle.grid == (2, 2, 4)
    handle.remove()


def test_regional_compile_with_dense_steps():
    """dense_steps reads the timestep outside the compiled blocks; a whole-model compile refuses it."""
    model = tiny_wan(layers=1)
    x = inputs()
    handle = apply_monarch_attention(model, w_reduce=2, dense_steps=1)
    eager_dense, eager_monarch = run(model, *x), run(model, x[0], torch.tensor([400.0]), x[2])
    handle.reset_steps()
    for block in model.blocks:
        block.compile(fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(run(model, *x), eager_dense, rtol=0, atol=1e-12)
    torch.testing.assert_close(run(model, x[0], torch.tensor([400.0]), x[2]), eager_monarch, rtol=0, atol=1e-12)
    assert handle.step == 1
    handle.remove()

    model = tiny_wan(layers=1)
    apply_monarch_attention(model, w_reduce=2, dense_steps=1)
    with pytest.raises(Exception, match="compile_repeated_blocks"):
        run(torch.compile(model, fullgraph=True, backend="aot_eager"), *x)


def test_misuse_raises():
    model = tiny_wan()
    with pytest.raises(TypeError, match="Wan transformer"):
        apply_monarch_attention(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="dense_layers entry 2"):
        apply_monarch_attention(model, dense_layers=(2,))
    with pytest.raises(ValueError, match="backend="):
        apply_monarch_attention(model, backend="flash")
    with pytest.raises(ValueError, match="w_reduce=0"):
        apply_monarch_attention(model, w_reduce=0)
    handle = apply_monarch_attention(model, w_reduce=4)
    with pytest.raises(ValueError, match="already installed"):
        apply_monarch_attention(model)
    with pytest.raises(ValueError, match="W=6 is not divisible by w_reduce=4"):
        run(model, *inputs())
    handle.remove()
    handle = apply_monarch_attention(model)
    with pytest.raises(ValueError, match="no frame grid recorded"):
        model.blocks[0].attn1(torch.randn(1, 8, NH * HEAD_DIM, dtype=torch.float64))
    handle.remove()
