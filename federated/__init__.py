"""Federated learning of pack adapters with Flower's Deployment Runtime (the only importer of flwr).

Modules, lightest first: ``config`` (opt-in state, budget), ``idle`` (when a device may train),
``lora`` (FFA-LoRA tensors, differential-privacy accounting), ``local`` (a device's training on
its own users' data), ``client_app`` / ``server_app`` (the Flower apps), ``runtime`` (SuperLink
and SuperNode processes), ``simulate`` (a measured loopback federation), ``cli``.
Nothing here is imported by the assistant's core; importing this package does no work.
"""
