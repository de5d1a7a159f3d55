"""The plan of one device when several processes train together (llmft/planning/sharding.py): what FSDP divides,
what it gathers, what DDP adds, where the process count comes from, and ``llmft-plan``'s per-device table."""

import subprocess
import sys
from dataclasses import replace

import pytest

from llmft.config.validate import validate
from llmft.errors import ConfigError
from llmft.planning import plan_memory, setup_from_cfg
from llmft.planning.fit import suggest
from llmft.planning.setup import process_count
from tests.test_planning import TINY_LINEAR, TINY_LORA, TINY_PARAMS, terms
from tests.test_planning_preflight import llmft_plan

TINY_ROOT = 2 * 259 * 64 + 64  # the tail group: embeddings and the untied head, 259 x 64 each, and the final norm


def tiny(make_cfg, *overrides):
    return setup_from_cfg(make_cfg(["model=tiny", "hardware.precision=fp32", *overrides]))


def test_fsdp_divides_what_it_shards_and_gathers_the_tail_group_and_the_layers_in_flight(make_cfg):
    one, two = tiny(make_cfg, "distributed=fsdp"), tiny(make_cfg, "distributed=fsdp", "hardware.num_processes=2")
    assert (one.distributed, two.distributed, two.processes) == ("none", "fsdp", 2)  # one process: nothing to shard
    whole, half = terms(plan_memory(one)), terms(plan_memory(two))
    assert half["base_weights"] == TINY_PARAMS * 4 / 2  # every decoder layer and the tail group, halved
    for key in ("lora_weights", "gradients", "optimizer_states"):
        assert half[key] == whole[key] / 2
    # the tail group whole during the step, and both layers of the tiny model (2 in flight) with their adapters
    assert half["gathered"] == TINY_ROOT * 4 + (TINY_PARAMS - TINY_ROOT) * 4 + TINY_LORA * 4
    assert half["activations"] == whole["activations"]  # per-process batch
    # FSDP's loss chunks go through autograd (llmft.loss), one process's head gradient is computed by hand
    assert half["logits"] - whole["logits"] == 512 * 259 * (16 - 4)
    assert "gathered" not in whole and "unsharded" not in whole


def test_ddp_holds_the_whole_model_and_its_gradient_buckets(make_cfg):
    for overrides in (["distributed=ddp"], []):  # distributed=none under a launcher is accelerate's DDP
        setup = tiny(make_cfg, *overrides, "hardware.num_processes=4")
        assert setup.distributed == "ddp"
        one, four = terms(plan_memory(replace(setup, processes=1, distributed="none"))), terms(plan_memory(setup))
        assert four.pop("buckets") == four["gradients"] == TINY_LORA * 4
        # on the CPU a copy of the whole weights made at start-up (DDP's broadcast) stays resident
        assert four.pop("overhead") - one.pop("overhead") == pytest.approx(TINY_PARAMS * 4) and four == one


def test_4bit_weights_in_integer_storage_stay_whole_and_in_float_storage_are_sharded(make_cfg):
    linear = 2 * TINY_LINEAR * (0.5 + 1 / 64 + 4 / (64 * 256))  # nf4 with double quantization
    rest = (TINY_PARAMS - 2 * TINY_LINEAR) * 4                     # upcast to fp32 by prepare_model_for_kbit_training
    nf4 = terms(plan_memory(tiny(make_cfg, "distributed=fsdp", "hardware.num_processes=2", "quantization=nf4")))
    sharded = terms(plan_memory(tiny(make_cfg, "distributed=fsdp", "hardware.num_processes=2",
                                     "quantization=nf4-sharded")))
    assert nf4["base_weights"] == pytest.approx(linear + rest / 2)
    assert sharded["base_weights"] == pytest.approx((linear + rest) / 2)


def test_fsdp_offload_keeps_the_shards_in_host_memory_on_a_gpu(make_cfg):
    gpu = ["hardware=h100-80gb", "distributed=fsdp-offload", "hardware.num_processes=8", "model=tinyllama-1.1b"]
    offload = plan_memory(setup_from_cfg(make_cfg(gpu)))
    on_card = plan_memory(replace(offload.setup, distributed="fsdp"))
    held = terms(offload)
    assert all(held[key] == 0 for key in ("base_weights", "lora_weights", "gradients", "optimizer_states"))
    assert held["gathered"] == terms(on_card)["gathered"] > 0
    assert "in host memory" in next(t.detail for t in offload.terms if t.key == "base_weights")
    # on the CPU the host is the device: offloading changes nothing in the plan
    cpu = tiny(make_cfg, "distributed=fsdp-offload", "hardware.num_processes=2")
    assert cpu.distributed == "fsdp-offload" and terms(plan_memory(cpu)) == terms(plan_memory(
        replace(cpu, distributed="fsdp")))


def test_sharding_shrinks_the_weights_per_device_and_only_the_main_process_holds_the_whole_model(make_cfg):
    base = ["model=llama-3.2-1b", "hardware=h100-80gb", "hardware.micro_batch_size=1", "data.max_seq_length=128",
            "distributed=fsdp"]
    one = plan_memory(setup_from_cfg(make_cfg(base)))
    eight = plan_memory(setup_from_cfg(make_cfg([*base, "hardware.num_processes=8"])))
    t1, t8 = terms(one), terms(eight)
    assert t8["base_weights"] == pytest.approx(t1["base_weights"] / 8)
    # the step needs far less than the whole model; the main process holds it whole in host memory, not on its GPU,
    # and the others build it on the meta device (cpu_ram_efficient_loading, conf/distributed/fsdp.yaml)
    step = sum(v for k, v in t8.items() if k not in ("unsharded", "overhead"))
    assert step < t1["base_weights"] and t8["unsharded"] == 0
    assert "in host memory, not on its device" in detail(eight, "unsharded")
    # with that loading off, each process loads the whole model onto its device first: that phase is the peak
    each = plan_memory(setup_from_cfg(make_cfg([*base, "hardware.num_processes=8",
                                                "distributed.cpu_ram_efficient_loading=false"])))
    assert step < t1["base_weights"] < step + terms(each)["unsharded"]
    assert "each process loads the whole model" in detail(each, "unsharded")
    # so does QLoRA: accelerate's loading from the main process leaves 4-bit weights out
    qlora = plan_memory(setup_from_cfg(make_cfg([*base, "hardware.num_processes=8", "quantization=nf4-sharded"])))
    assert "each process loads the whole model" in detail(qlora, "unsharded")
    # on CPU processes the host is the device: the main process's whole copy, beside its shards, is planned
    cpu = tiny(make_cfg, "distributed=fsdp", "hardware.num_processes=2")
    assert cpu.main_loads and "the main process holds the whole model" in detail(plan_memory(cpu), "unsharded")


def detail(plan, key: str) -> str:
    return next(t.detail for t in plan.terms if t.key == key)


def test_the_process_count_is_the_launchers_or_hardware_num_processes():
    assert process_count({"num_processes": None}, {}) == 1
    assert process_count({"num_processes": 8}, {}) == 8
    assert process_count({"num_processes": None}, {"WORLD_SIZE": "4"}) == 4
    assert process_count({"num_processes": 4}, {"WORLD_SIZE": "4"}) == 4
    with pytest.raises(ConfigError, match=r"hardware.num_processes=8, but the launcher started 2 processes"):
        process_count({"num_processes": 8}, {"WORLD_SIZE": "2"})


def test_llmft_train_refuses_a_process_count_other_than_the_launchers(make_cfg, monkeypatch):
    cfg = make_cfg(["model=tiny", "hardware.num_processes=8"])
    validate(cfg, bind_targets=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="drop hardware.num_processes, or launch 8 processes"):
        validate(cfg, bind_targets=False)


def test_llmft_plan_shows_the_plan_of_one_device_of_eight_without_importing_torch():
    result = llmft_plan("hardware=h100-80gb", "distributed=fsdp", "hardware.num_processes=8", "model=tinyllama-1.1b")
    assert result.returncode == 0, result.stderr
    assert "per device: distributed=fsdp over 8 processes, one device each" in result.stdout
    assert "  gathered weights " in result.stdout and "1/8 of the decoder layers" in result.stdout
    bad = llmft_plan("hardware.num_processes=0")
    assert bad.returncode == 2 and "hardware.num_processes=0 is out of range" in bad.stderr
    code = ("import sys; from llmft.plan import _plan\n"
            "for d in ('ddp', 'fsdp', 'fsdp-offload'):\n"
            "    _plan(['hardware=h100-80gb', f'distributed={d}', 'hardware.num_processes=8'])\n"
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'accelerate') if m in sys.modules))")
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert imported.returncode == 0 and imported.stdout.strip() == "[]", imported.stderr


def test_under_fsdp_the_qlora_suggestion_is_the_option_fsdp_shards(make_cfg):
    cfg = ["model=phi-2", "hardware=gtx1660-6gb", "hardware.num_processes=4"]
    # the main process holds Phi-2's 5.2 GiB in host memory, and each card only its shards: it fits
    assert plan_memory(setup_from_cfg(make_cfg([*cfg, "distributed=fsdp"]))).fits
    # every process loading the whole model onto its card does not
    fsdp = plan_memory(setup_from_cfg(make_cfg([*cfg, "distributed=fsdp",
                                                "distributed.cpu_ram_efficient_loading=false"])))
    assert not fsdp.fits and terms(fsdp)["unsharded"] > 2 * 2**30  # loading the whole 5.2 GiB model is the peak
    [suggestion] = [s for s in suggest(fsdp.setup) if "quantization" in s.changes]
    assert suggestion.overrides == ["quantization=nf4-sharded"] and suggestion.plan.fits
    assert suggestion.plan.setup.quant_storage_float
    ddp = setup_from_cfg(make_cfg([*cfg, "distributed=ddp", "hardware.micro_batch_size=8"]))
    assert all(s.changes.get("quantization") in (None, "nf4") for s in suggest(ddp))
