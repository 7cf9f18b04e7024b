"""RouteNLP: the CLI and the shared code above the core (metrics, portfolio config, data, deployment)."""

import sys

from routenlp_core import answers, tasks

__version__ = "0.1.0"

# Repository versions written before these modules moved to routenlp_core import them from here
# (their model.py is a copy of the adapter of the day); the aliases keep them loadable.
sys.modules.setdefault(f"{__name__}.answers", answers)
sys.modules.setdefault(f"{__name__}.tasks", tasks)
