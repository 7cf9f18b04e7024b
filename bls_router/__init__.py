"""Serving: the routing BLS's logic and its Triton adapters (triton_models/). Imports only routenlp_core."""

import sys

from routenlp_core import cascade, conformal, serving_config, t1_codec, uncertainty

# Repository versions written before these modules moved to routenlp_core hold a model.py that
# imports them from here; the aliases keep such versions loadable (deploy / roll back).
for _name, _module in {
    "cascade": cascade, "conformal": conformal, "serving_config": serving_config, "t1_codec": t1_codec,
    "uncertainty": uncertainty,
}.items():
    sys.modules.setdefault(f"{__name__}.{_name}", _module)
