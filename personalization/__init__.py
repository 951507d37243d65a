"""On-device learning: the journal, training data, LoRA trainer, gate and adapter store."""
