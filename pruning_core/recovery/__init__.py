"""Recovery: masked LoRA adapters that win back quality after pruning and keep every pruned weight at zero.

masked_lora (PEFT's LoRA with a masked delta), ranks (where to spend the adapter budget), train (the training
loop with checkpoints), run (`run_recovery`: prune, recover, measure, save; job kind "recovery").
"""
