"""What the benchmarks share: an assistant in a scratch data directory that reuses this machine's
converted models (so a run never touches the user's own data)."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def scratch_assistant() -> Iterator[Any]:
    """An ``Assistant`` (learner wired) whose ASSISTANT_HOME is a temporary folder, removed after."""
    from assistant import paths

    models = paths.models_dir()
    with tempfile.TemporaryDirectory() as scratch:
        os.environ["ASSISTANT_HOME"] = scratch
        if models.is_dir():
            (Path(scratch) / "models").symlink_to(models, target_is_directory=True)
        from assistant import settings as settings_mod
        from assistant.core import Assistant
        from personalization.learner import Learner

        yield Assistant(settings_mod.load(env={}), learner=Learner)
