"""Micro-batches (llmft.data.batching): an epoch's order from (seed, epoch) alone; grouping and packing cut waste;
a packed batch trains exactly like its records one by one."""

import random

import numpy as np
import pytest
import torch
import transformers
from peft import LoraConfig, get_peft_model

from llmft.data import pad_collate
from llmft.data.batching import epoch_batches, pack_collate
from llmft.loss import lm_loss_sum

LENGTHS = [int(x) for x in np.random.default_rng(7).integers(20, 500, size=403)]
MODES = [dict(group_by_length=False, packing=False), dict(group_by_length=True, packing=False),
         dict(group_by_length=False, packing=True)]


@pytest.mark.parametrize("mode", MODES, ids=["shuffle", "grouped", "packed"])
def test_epoch_order_is_a_pure_function_of_seed_and_epoch(mode):
    first = epoch_batches(LENGTHS, 8, seed=3, epoch=1, max_tokens=2048, **mode)
    torch.manual_seed(123), np.random.seed(123), random.seed(123)  # noqa: the global state must not matter
    state = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    assert epoch_batches(LENGTHS, 8, seed=3, epoch=1, max_tokens=2048, **mode) == first
    assert torch.equal(state[0], torch.get_rng_state()) and (state[1] == np.random.get_state()[1]).all()
    assert state[2] == random.getstate()  # and is left as it was
    assert epoch_batches(LENGTHS, 8, seed=3, epoch=2, max_tokens=2048, **mode) != first
    assert epoch_batches(LENGTHS, 8, seed=4, epoch=1, max_tokens=2048, **mode) != first
    assert sorted(i for b in first for i in b) == list(range(len(LENGTHS)))  # every record once


def padded_tokens(batches):
    return sum(len(b) * max(LENGTHS[i] for i in b) for b in batches)


def test_grouping_by_length_cuts_padding_and_puts_the_longest_batch_first():
    plain = epoch_batches(LENGTHS, 8, 0, 0, group_by_length=False, packing=False, max_tokens=1)
    grouped = epoch_batches(LENGTHS, 8, 0, 0, group_by_length=True, packing=False, max_tokens=1)
    assert sorted(len(b) for b in grouped) == sorted(len(b) for b in plain) == [3] + [8] * 50
    assert padded_tokens(grouped) < 0.65 * padded_tokens(plain)
    assert max(LENGTHS[i] for i in grouped[0]) == max(LENGTHS)
    assert padded_tokens(grouped) < 1.05 * sum(LENGTHS)  # 40% padding without grouping, under 5% with


def test_packing_fills_micro_batches_up_to_the_budget():
    packs = epoch_batches(LENGTHS + [3000], 8, 0, 0, group_by_length=False, packing=True, max_tokens=2048)
    sizes = [sum((LENGTHS + [3000])[i] for i in p) for p in packs]
    assert [p for p, s in zip(packs, sizes) if s > 2048] == [[len(LENGTHS)]]  # only the over-long record, alone
    assert len(packs) <= 1.05 * (sum(LENGTHS) / 2048) + 2


def test_pack_collate_restarts_positions_and_never_predicts_across_records():
    batch = pack_collate([{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8, 9], "labels": [8, 9]}])
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100, 9]] and "attention_mask" not in batch


def records(vocab, lengths, seed=1):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(3, vocab, (n,), generator=gen).tolist()
        out.append({"input_ids": ids, "labels": ids})  # every token labelled, as with train_on_prompt
    return out


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_batch_equals_its_records_one_by_one(attn):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, attn_implementation=attn)
    model = get_peft_model(transformers.LlamaForCausalLM(config),
                           LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear"))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    feats = records(300, [17, 30, 1, 12])

    def run(batches):
        model.zero_grad(set_to_none=True)
        total, count = 0.0, 0
        for b in batches:
            loss, n = lm_loss_sum(model, b, chunk_tokens=8)
            loss.backward()
            total, count = total + float(loss.detach()), count + n
        return total, count, {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}

    packed = run([pack_collate(feats)])
    alone = run([pad_collate([f], 0) for f in feats])
    assert packed[1] == alone[1] == 16 + 29 + 0 + 11
    assert packed[0] == pytest.approx(alone[0], rel=1e-5)
    for k, g in alone[2].items():
        torch.testing.assert_close(packed[2][k], g, rtol=1e-5, atol=1e-5 * g.abs().max().item())
