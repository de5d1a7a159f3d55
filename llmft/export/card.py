"""The model card (``README.md``) written beside an exported adapter."""

from typing import Optional

from omegaconf import DictConfig, OmegaConf

QLORA_NOTE = (
    "This adapter was trained on top of the base model's weights quantized to 4-bit ({quant}). The merged model "
    "adds the adapter to the base loaded in {dtype} instead, so its outputs differ slightly from those of the "
    "4-bit model the adapter was trained and evaluated with (the quantization error is gone, the adapter was not "
    "trained for its absence). `export_report.json` gives the measured gap as `quantization_gap_max_abs`."
)


def model_card(cfg: DictConfig, summary: dict, report: Optional[dict], merged_dtype: str = "float32") -> str:
    """Markdown with Hub metadata: base model, LoRA and quantization settings, data, training and eval figures."""
    lora, quant, trainer, hw = cfg.lora, cfg.quantization, cfg.trainer, cfg.hardware
    name = cfg.model.name_or_path
    quant_text = "none" if quant is None else ", ".join(
        f"{k}={v}" for k, v in OmegaConf.to_container(quant, resolve=True).items() if not k.startswith("_"))
    targets = OmegaConf.to_container(lora.target_modules) if OmegaConf.is_list(lora.target_modules) \
        else lora.target_modules
    rows = [("base model", name),
            ("LoRA", f"r={lora.r}, lora_alpha={lora.lora_alpha}, dropout={lora.lora_dropout}, target_modules={targets}"),
            ("variant", "DoRA" if lora.use_dora else "rsLoRA" if lora.use_rslora else "LoRA"),
            ("quantization", quant_text), ("data", str(cfg.data.path)),
            ("training", f"{summary.get('train_steps')} steps, learning rate {trainer.learning_rate}, "
                         f"{trainer.lr_scheduler} schedule, max_seq_length {cfg.data.max_seq_length}, micro-batch "
                         f"{hw.micro_batch_size} x {hw.gradient_accumulation_steps}, {hw.precision}, seed {cfg.seed}"),
            ("trainable parameters", f"{summary.get('trainable_params'):,} of {summary.get('total_params'):,}")]
    lines = ["---", f"base_model: {name}", "library_name: peft", "tags: [llmft, lora]", "---", "",
             f"# LoRA adapter for {name}", "", "Fine-tuned with [llmft](https://pypi.org/project/llmft/).", "",
             "| setting | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], ""]
    lines += _evaluation(report)
    lines += ["## Use", "", "```python", "from peft import PeftModel", "from transformers import "
              "AutoModelForCausalLM, AutoTokenizer", "", f'base = AutoModelForCausalLM.from_pretrained("{name}")',
              'model = PeftModel.from_pretrained(base, "path/to/this/folder")',
              'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")', "```", ""]
    if quant is not None and quant.get("load_in_4bit"):
        lines += ["## Quantization", "", QLORA_NOTE.format(quant=quant.get("bnb_4bit_quant_type"),
                                                          dtype=merged_dtype), ""]
    return "\n".join(lines)


def _evaluation(report: Optional[dict]) -> list:
    if not report or "perplexity" not in report:
        return []
    lines = [f"## Evaluation ({report['num_samples']} validation conversations, {report['total_tokens']} "
             "assistant tokens)", "", "| | base | fine-tuned |", "|---|---|---|"]
    lines += [f"| {k} | {report['base'][k]:.4f} | {report[k]:.4f} |" for k in ("eval_loss", "perplexity")]
    for key, value in report.get("metrics", {}).get("finetuned", {}).items():
        lines.append(f"| {key} | {report['metrics']['base'][key]:.4f} | {value:.4f} |")
    return lines + [""]
