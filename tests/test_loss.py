"""The chunked loss (llmft.loss) equals the plain full-logits computation: loss and LoRA gradients, fp32."""

import pytest
import torch
import torch.nn.functional as F
import transformers
from torch.utils._python_dispatch import TorchDispatchMode
from peft import LoraConfig, get_peft_model
from transformers import BitsAndBytesConfig

from llmft.adapters import apply_lora
from llmft.data import pad_collate
from llmft.errors import ConfigError
from llmft.loss import lm_loss_sum
from llmft.models import build_tiny

TINY_ARCH = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=2048)
SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2)


def lora(model):
    torch.manual_seed(0)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear"))
    for name, p in peft.named_parameters():  # B starts at zero; make it non-zero so every gradient is tested
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    return peft


def records(vocab: int, lengths=(23, 9, 40, 17), seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(3, vocab, (n,), generator=gen).tolist()
        labels = [-100] * (n // 3) + ids[n // 3:]  # a prompt, then the answer
        out.append({"input_ids": ids, "labels": labels})
    return out


def full_logits_loss(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels.flatten(), ignore_index=-100,
                           reduction="sum")
    return loss, int((labels != -100).sum())


def loss_and_grads(fn, model, batch):
    model.zero_grad(set_to_none=True)
    loss, n = fn(model, batch)
    (loss / 7).backward()  # as the loop does (a window's token count): the chain rule must go through
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}
    return float(loss.detach()), n, grads


def assert_same(model, batch, chunk_tokens=16, tol=1e-5):
    ref_loss, ref_n, ref_grads = loss_and_grads(full_logits_loss, model, batch)
    loss, n, grads = loss_and_grads(lambda m, b: lm_loss_sum(m, b, chunk_tokens), model, batch)
    assert n == ref_n > chunk_tokens  # several chunks
    assert loss == pytest.approx(ref_loss, rel=tol)
    assert grads.keys() == ref_grads.keys() and len(grads) > 0
    for k in grads:
        torch.testing.assert_close(grads[k], ref_grads[k], rtol=tol, atol=tol * ref_grads[k].abs().max().item())


def test_tiny_model_loss_and_lora_gradients_equal_full_logits(cache_dir):
    loaded = build_tiny(arch=TINY_ARCH, cache_dir=cache_dir)
    model = lora(loaded.model)
    batch = pad_collate(records(len(loaded.tokenizer)), loaded.tokenizer.pad_token_id)
    assert_same(model, batch)
    with torch.no_grad():  # evaluation: the same figure without a graph
        assert float(lm_loss_sum(model, batch, 16)[0]) == pytest.approx(float(full_logits_loss(model, batch)[0]),
                                                                        rel=1e-5)


def test_49k_vocabulary_tied_embeddings():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=49152, tie_word_embeddings=True, **SMALL)
    model = lora(transformers.LlamaForCausalLM(config))
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert_same(model, pad_collate(records(49152), 0), chunk_tokens=32)


@pytest.mark.parametrize("config", [
    transformers.Gemma2Config(vocab_size=300, final_logit_softcapping=2.0, head_dim=8, **SMALL),
    transformers.GraniteConfig(vocab_size=300, logits_scaling=4.0, **SMALL),
    transformers.CohereConfig(vocab_size=300, logit_scale=0.25, **SMALL),
    transformers.PhiConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4),  # lm_head with a bias
], ids=lambda c: c.model_type)
def test_soft_capping_scaling_and_head_bias_follow_the_model(config):
    torch.manual_seed(0)
    model = lora(transformers.AutoModelForCausalLM.from_config(config))
    assert_same(model, pad_collate(records(300), 0))


def test_unknown_model_type_is_refused():
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(transformers.GPT2Config(vocab_size=300, n_embd=32,
                                                                                  n_layer=1, n_head=4))
    with pytest.raises(ConfigError, match="does not know what a 'gpt2' model does to its logits"):
        lm_loss_sum(model, pad_collate(records(300), 0))


def test_bf16_autocast_runs_and_stays_close(cache_dir):
    loaded = build_tiny(arch=TINY_ARCH, cache_dir=cache_dir)
    model = lora(loaded.model)
    batch = pad_collate(records(len(loaded.tokenizer)), loaded.tokenizer.pad_token_id)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, n = lm_loss_sum(model, batch, 16)
    loss.backward()
    assert loss.dtype == torch.float32 and n > 0
    assert float(loss) == pytest.approx(float(full_logits_loss(model, batch)[0]), rel=2e-2)


def test_qlora_4bit_base_runs(cache_dir):
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    loaded = build_tiny(arch=TINY_ARCH, cache_dir=cache_dir, quantization_config=quant)
    model = lora(loaded.model)
    batch = pad_collate(records(len(loaded.tokenizer)), loaded.tokenizer.pad_token_id)
    assert_same(model, batch, tol=1e-4)  # the same quantized weights on both sides


def test_nothing_labelled_gives_a_zero_that_backpropagates(cache_dir):
    loaded = build_tiny(arch=TINY_ARCH, cache_dir=cache_dir)
    model = lora(loaded.model)
    batch = pad_collate([{"input_ids": [5, 6, 7], "labels": [-100, -100, -100]}], 0)
    loss, n = lm_loss_sum(model, batch)
    loss.backward()
    assert (float(loss), n) == (0.0, 0)


class LargestVocabTensor(TorchDispatchMode):
    """Records the largest new tensor (not a view, such as the transposed lm_head weight) whose last dimension is
    the vocabulary, among all that any op creates."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab, self.largest = vocab, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.is_view:
            return out
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.ndim and t.shape[-1] == self.vocab:
                self.largest = max(self.largest, t.numel() // self.vocab)
        return out


def test_no_vocabulary_tensor_larger_than_a_chunk_forward_or_backward():
    torch.manual_seed(0)
    model = lora(transformers.LlamaForCausalLM(transformers.LlamaConfig(vocab_size=4099, **SMALL)))
    batch = pad_collate(records(4099, lengths=(60, 50, 70)), 0)
    with LargestVocabTensor(4099) as watch:
        loss, n = lm_loss_sum(model, batch, chunk_tokens=8)
        loss.backward()
    assert n > 100 and watch.largest == 8  # rows of [rows, vocab]; the full logits would have 3 x 70
    with LargestVocabTensor(4099) as watch:
        full_logits_loss(model, batch)[0].backward()
    assert watch.largest == 3 * 70  # the watch sees the plain computation's logits


def test_gradient_checkpointing_gives_the_same_gradients(cache_dir):
    loaded = build_tiny(arch=TINY_ARCH, cache_dir=cache_dir)
    torch.manual_seed(0)
    model = apply_lora(loaded.model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear"),
                       gradient_checkpointing=True)  # as llmft applies it
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    model.train()
    assert loaded.model.model.layers[0].gradient_checkpointing
    assert_same(model, pad_collate(records(len(loaded.tokenizer)), loaded.tokenizer.pad_token_id))


def test_a_trained_output_layer_gets_its_gradients_too():
    torch.manual_seed(0)
    base = transformers.LlamaForCausalLM(transformers.LlamaConfig(vocab_size=300, tie_word_embeddings=False, **SMALL))
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "lm_head"]))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    assert any("lm_head" in k and p.requires_grad for k, p in model.named_parameters())
    assert_same(model, pad_collate(records(300), 0))
