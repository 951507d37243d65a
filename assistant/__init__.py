"""A private, on-device personal domain assistant.

Nothing heavy is imported here: `assistant --help` must come up fast.
"""

__version__ = "0.1.0"
