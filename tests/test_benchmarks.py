"""The accounting in benchmarks/h100_static.py (the compile itself needs jaxlib's CUDA plugin)."""
# ruff: noqa: E501 (HLO text keeps its long lines)

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import h100_static  # noqa: E402

# A scheduled module as XLA prints it, cut down: a GEMM fusion, a cuDNN call, a Pallas call,
# an elementwise fusion with a tuple output, and a reduction inside a while loop of 3 trips.
HLO = """\
HloModule jit_step, is_scheduled=true

%fused_multiply (param_0: bf16[8,16]) -> bf16[8,16] {
  %param_0 = bf16[8,16]{1,0} parameter(0)
  ROOT %multiply = bf16[8,16]{1,0} multiply(%param_0, %param_0)
}

%body (carry: (s32[], f32[4,32])) -> (s32[], f32[4,32]) {
  %carry = (s32[], f32[4,32]{1,0}) parameter(0)
  %x = f32[4,32]{1,0} get-tuple-element(%carry), index=1
  %input_reduce_fusion.2 = f32[4]{0} fusion(%x), kind=kInput, calls=%fused_reduce, metadata={op_name="jit(train_step)/jvp(Transformer)/encoder/layers_7/pre_mlp_layer_norm/reduce_sum"}
  ROOT %t = (s32[], f32[4,32]{1,0}) tuple(%i, %x)
}

ENTRY %main (p0: bf16[8,16], p1: bf16[16,24], p2: f32[4,32]) -> bf16[8,24] {
  %p0 = bf16[8,16]{1,0} parameter(0)
  %p1 = bf16[16,24]{1,0} parameter(1)
  %p2 = f32[4,32]{1,0} parameter(2)
  %gemm_fusion_dot.1 = bf16[8,24]{1,0} fusion(%p0, %p1), kind=kCustom, calls=%gemm, metadata={op_name="jit(train_step)/jvp(Transformer)/decoder/logits_dense/dot_general"}
  %loop_multiply_fusion.3 = (bf16[8,16]{1,0}, f32[8,16]{1,0}) fusion(%p0), kind=kLoop, calls=%fused_multiply, metadata={op_name="jit(train_step)/jvp(Transformer)/encoder/layers_11/mlp/mul"}
  %custom-call.4 = (bf16[8,16]{1,0}, u8[0]{0}) custom-call(%p0, %p0), custom_call_target="__cudnn$fmhaSoftmax", metadata={op_name="jit(train_step)/attention"}
  %custom-call.5 = bf16[8,16]{1,0} custom-call(%p0), custom_call_target="__gpu$xla.gpu.triton", metadata={op_name="jit(train_step)/t5_attention_forward/pallas_call"}
  %while.6 = (s32[], f32[4,32]{1,0}) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"3"}}
  ROOT %out = bf16[8,24]{1,0} copy(%gemm_fusion_dot.1)
}
"""


def test_array_bytes_counts_every_element_of_a_tuple():
    assert h100_static.array_bytes("bf16[8,16]{1,0}") == 256
    assert h100_static.array_bytes("(f32[4,32]{1,0}, pred[3], s64[2])") == 512 + 3 + 16
    assert h100_static.array_bytes("f32[]") == 4
    assert h100_static.array_bytes("(s32[], u8[0]{0})") == 4


def test_kernels_classes_bytes_and_loop_trips():
    found = {k["op"]: k for k in h100_static.kernels(HLO)}
    gemm = found["jvp(Transformer)/decoder/logits_dense/dot_general"]
    assert gemm["class"] == "matmul" and gemm["bytes"] == 256 + 768 + 384
    mlp = found["jvp(Transformer)/encoder/layers_N/mlp/mul"]  # layer index folded
    assert mlp["class"] == "elementwise" and mlp["bytes"] == 256 + 256 + 512
    assert found["attention"]["class"] == "cudnn attention"
    assert found["t5_attention_forward/pallas_call"]["class"] == "pallas"
    norm = found["jvp(Transformer)/encoder/layers_N/pre_mlp_layer_norm/reduce_sum"]
    assert norm["class"] == "reduction" and norm["times"] == 3 and norm["bytes"] == 512 + 16
    assert found["out"]["class"] == "copy"

    summary = h100_static.summarize(h100_static.kernels(HLO), top=10)
    assert summary["kernels"] == 6 + 2  # the loop's reduction runs 3 times
    reduction = summary["by_class"]["reduction"]
    assert reduction["kernels"] == 3 and reduction["gb"] == pytest.approx(3 * 528 / 1e9)
    assert reduction["ms_at_3TBps"] == pytest.approx(3 * 528 / 3e12 * 1e3)
    assert "ms_at_3TBps" not in summary["by_class"]["matmul"]  # compute bound: no estimate
    assert all(row["class"] != "matmul" for row in summary["top_ops"])
