"""Micro-batches without waste: length-grouped or packed, and an epoch's order that is a pure function of
``(seed, epoch)`` (no global random state), so that a resumed run sees exactly the batches it would have seen.

``epoch_batches`` decides which records go together; ``pack_collate`` turns a packed micro-batch into one row whose
positions restart at each record. transformers 5.x (``masking_utils.find_packed_sequence_indices``) reads such
positions as separate sequences and masks attention across them, for eager and sdpa alike, when the model gets
``position_ids`` with ``attention_mask=None`` and no cache (``use_cache=False``): ``pack_collate`` therefore
returns no ``attention_mask``.
"""

from typing import Dict, List, Sequence

import numpy as np
import torch

from llmft.data.tokenize import IGNORE_INDEX

MEGA_BATCH = 50  # micro-batches sorted together when grouping by length
PACK_WINDOW = 400  # records packed together (first-fit decreasing); keeps the packs of an epoch in random order


def epoch_batches(lengths: Sequence[int], micro_batch_size: int, seed: int, epoch: int, *,
                  group_by_length: bool, packing: bool, max_tokens: int) -> List[List[int]]:
    """The micro-batches of one epoch, as lists of dataset indices.

    Args:
        lengths: tokens of each record.
        micro_batch_size: records per micro-batch (without packing).
        seed: the run's seed.
        epoch: the epoch (0, 1, ...); each epoch has its own order.
        group_by_length: shuffle, sort by length within mega-batches of ``MEGA_BATCH`` micro-batches, then
            shuffle the micro-batches (the longest one first, so that a run that runs out of memory does so at once).
        packing: fill each micro-batch with records up to ``max_tokens`` tokens in all (one packed row); packing
            needs no grouping, so ``group_by_length`` is then ignored.
        max_tokens: the token budget of a packed micro-batch; a longer record gets a micro-batch of its own.

    Returns:
        Every index exactly once, grouped into micro-batches.
    """
    if micro_batch_size < 1 or max_tokens < 1:
        raise ValueError(f"micro_batch_size ({micro_batch_size}) and max_tokens ({max_tokens}) must be at least 1")
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths)).tolist()
    if packing:
        return _pack(order, lengths, max_tokens, rng)
    if not group_by_length:
        return [order[i:i + micro_batch_size] for i in range(0, len(order), micro_batch_size)]
    mega = micro_batch_size * MEGA_BATCH
    batches = []
    for start in range(0, len(order), mega):
        group = sorted(order[start:start + mega], key=lambda i: -lengths[i])
        batches += [group[i:i + micro_batch_size] for i in range(0, len(group), micro_batch_size)]
    batches = [batches[i] for i in rng.permutation(len(batches))]
    longest = max(range(len(batches)), key=lambda b: max(lengths[i] for i in batches[b]), default=0)
    return batches[longest:longest + 1] + batches[:longest] + batches[longest + 1:]


def _pack(order: List[int], lengths: Sequence[int], max_tokens: int, rng) -> List[List[int]]:
    """First-fit decreasing within mega-batches of the shuffled order, then the packs shuffled."""
    packs: List[List[int]] = []
    for start in range(0, len(order), PACK_WINDOW):
        bins: List[List[int]] = []
        room: List[int] = []
        for i in sorted(order[start:start + PACK_WINDOW], key=lambda i: -lengths[i]):
            slot = next((b for b, r in enumerate(room) if r >= lengths[i]), None)
            if slot is None:
                bins.append([i])
                room.append(max_tokens - lengths[i])
            else:
                bins[slot].append(i)
                room[slot] -= lengths[i]
        packs += bins
    return [packs[i] for i in rng.permutation(len(packs))]


def pack_collate(features: List[dict]) -> Dict[str, torch.Tensor]:
    """Concatenate records into one row with positions restarting at each record.

    Args:
        features: examples with ``input_ids`` and ``labels`` lists.

    Returns:
        ``input_ids``, ``labels`` and ``position_ids``, each ``[1, total tokens]``, and no ``attention_mask``
        (the model masks attention across records from the positions). Each record's first label is -100: that
        token would otherwise be predicted from the previous record's last one.
    """
    ids, labels, positions = [], [], []
    for f in features:
        n = len(f["input_ids"])
        ids += list(f["input_ids"])
        labels += [IGNORE_INDEX] + list(f.get("labels", f["input_ids"]))[1:n]
        positions += range(n)
    return {"input_ids": torch.tensor([ids], dtype=torch.long), "labels": torch.tensor([labels], dtype=torch.long),
            "position_ids": torch.tensor([positions], dtype=torch.long)}
