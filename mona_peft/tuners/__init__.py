"""The fine-tuning methods and what they share.

- one package per method (``config.py``, ``layer.py``, ``model.py``), which declares itself at the bottom of its
  ``__init__`` (:mod:`.registry`);
- :mod:`.registry`: the one place that registers methods, with PEFT and as the scripts' ``--method``;
- :mod:`.methods`: applying a method by name, its parameter groups, checkpointing what it trains;
- :mod:`.architectures`: the one place that describes each supported backbone;
- :mod:`.tuner_utils`, :mod:`.bottleneck`, :mod:`.config_utils`: the tuner plumbing the method packages share.

Adding a method: its own folder, plus its name in the import below.
"""

# isort: off
# The method packages, in the order reports list their methods; importing one registers it.
from . import baselines, houlsby, adaptformer, vpt, mona  # noqa: F401

# isort: on
