"""The environment of a subprocess that the tests drive by steps, not by the machine's speed: ``site/`` on its
``PYTHONPATH`` (its ``sitecustomize`` applies the hooks, the product never reads them) and the hooks asked for."""

from __future__ import annotations

import os
from pathlib import Path

SITE = Path(__file__).parent / "site"
#: The variable :func:`hooked` sets for ``npm_integrity`` (an environment's hook, as tests read it back).
NPM_INTEGRITY = "CNN_JAX_TEST_NPM_INTEGRITY"


def hooked(env: dict[str, str], *, step_seconds: float | None = None, signal_at: str | None = None,
           npm_integrity: str | None = None) -> dict[str, str]:
    """``env`` with the test hooks (``tests/site/sitecustomize.py``): ``step_seconds`` slows every training step;
    ``signal_at`` (``"STEP[:SIGNAME]"``) sends the process a signal once the chunk reaching STEP is done;
    ``npm_integrity`` is accepted as the stand-in's pinned npm package."""
    out = {k: v for k, v in env.items() if not k.startswith("CNN_JAX_TEST_") or k == "CNN_JAX_TEST_NO_CACHE"}
    out["PYTHONPATH"] = os.pathsep.join([str(SITE), *filter(None, [env.get("PYTHONPATH")])])
    for name, value in (("CNN_JAX_TEST_STEP_SECONDS", step_seconds), ("CNN_JAX_TEST_SIGNAL_AT", signal_at),
                        (NPM_INTEGRITY, npm_integrity)):
        if value is not None:
            out[name] = str(value)
    return out
