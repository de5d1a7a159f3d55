"""hardware.precision=auto (llmft.hardware): the machine's features decide; only the detection is replaced here."""

import pytest

from llmft import hardware
from llmft.config.resolvers import precision_to_dtype
from llmft.planning.setup import setup_from_cfg

AVX2_ONLY = frozenset({"sse4_2", "avx", "avx2", "fma"})


@pytest.mark.parametrize("features, expected", [
    (AVX2_ONLY, "fp32"),
    (AVX2_ONLY | {"avx512f", "avx512_bf16"}, "bf16"),
    (AVX2_ONLY | {"amx_tile", "amx_bf16"}, "bf16"),
    (AVX2_ONLY | {"avx512f", "avx512_vnni"}, "fp32"),  # AVX-512 without its bf16 instructions
], ids=["avx2", "avx512-bf16", "amx", "avx512-no-bf16"])
def test_auto_on_cpu_follows_native_bf16(monkeypatch, features, expected):
    monkeypatch.setattr(hardware, "cpu_features", lambda: features)
    assert hardware.resolve_precision("auto", "cpu") == expected
    assert hardware.resolve_precision("fp32", "cpu") == "fp32"  # an explicit choice stays
    assert precision_to_dtype("auto", "cpu") == {"fp32": "float32", "bf16": "bfloat16"}[expected]


@pytest.mark.parametrize("supported, expected", [(True, "bf16"), (False, "fp16"), (None, "bf16")],
                         ids=["bf16-card", "gtx1660", "no-cuda-here"])
def test_auto_on_cuda_follows_the_card(monkeypatch, supported, expected):
    monkeypatch.setattr(hardware, "cuda_bf16", lambda: supported)
    assert hardware.resolve_precision("auto", "cuda") == expected


def test_this_machine_is_detected_as_torch_sees_it():
    torch = pytest.importorskip("torch")
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu.get_capabilities().get("amx_bf16", False)
    assert hardware.resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")


def test_cpu_profile_defaults_to_auto_everywhere_it_is_read(make_cfg, monkeypatch):
    monkeypatch.setattr(hardware, "cpu_features", lambda: AVX2_ONLY)
    cfg = make_cfg(["quantization=nf4"])
    assert (cfg.hardware.precision, cfg.quantization.bnb_4bit_compute_dtype) == ("fp32", "float32")
    assert setup_from_cfg(make_cfg(["hardware.precision=auto"])).precision == "fp32"
    monkeypatch.setattr(hardware, "cpu_features", lambda: AVX2_ONLY | {"amx_bf16"})
    assert make_cfg([]).hardware.precision == "bf16"
    assert setup_from_cfg(make_cfg(["hardware.precision=auto"])).precision == "bf16"
