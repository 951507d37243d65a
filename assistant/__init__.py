"""A private, on-device personal domain assistant.

Nothing heavy is imported here: `assistant --help` must come up fast.
"""

VERSION = "0.1.0"
__version__ = VERSION
