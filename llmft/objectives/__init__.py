"""Objectives: how records become batches and a batch becomes a loss, the seam between the data and the one loop.

An objective (one option of the ``objective`` config group, named through ``_target_``) tells the pipeline how to
tokenize records (``tokenize``), collate them (``collate``) and how wide each is for the batch plan
(``lengths``); whether it reads preference pairs (``pairs``). It tells the training loop, for each batch,
``units(batch)``, what the loss is averaged over (labelled tokens for supervised fine-tuning, pairs for a
preference objective), so that gradient accumulation weighs every unit alike however the window's micro-batches
are cut; and ``loss_and_figures(model, batch)``: the summed loss over those units and extra figures, each also
summed over the units (the loop averages them like the loss and logs them: ``rewards/margin`` ...).
"""

from llmft.objectives.preference import DPO, ORPO
from llmft.objectives.sft import SFT

__all__ = ["DPO", "ORPO", "SFT"]
