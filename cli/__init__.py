"""The `assistant` command: one module per command group (`main` builds the parser and runs it).

Every module here imports only argparse and the standard library at module level; a command's
body imports what it needs, so `assistant --help` starts in a fraction of a second.
"""
