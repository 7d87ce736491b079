"""patchaudit: which attribution-patching estimates to trust.

import patchaudit as pa
model = pa.load_model("bundled")
pairs = pa.PromptPairs.from_task("ioi", n=16, seed=0)
report = pa.audit(model, pairs, methods=("atp", "hvp", "ap"))
"""

from .audit import (
    FixResult,
    VerifyResult,
    audit,
    base_key,
    diagnose,
    screen_flag_fix,
    verify,
)
from .circuits import CircuitCurve, Faithfulness, circuit_curve, faithfulness
from .detail import ComponentDetail, inspect
from .diagnosis import Diagnosis
from .estimators.core import DIRECTIONS, BaseCache, Cancelled
from .estimators.methods import METHODS
from .estimators.sites import SITES
from .models import BUNDLED_DIR, ModelLoadError, list_models, load_model
from .report import Report
from .tasks import list_tasks
from .tasks.metrics import METRICS
from .tasks.pairs import PromptPairs, TokenPairs, check_pairs

__version__ = "0.1.0"

__all__ = [
    "BUNDLED_DIR",
    "DIRECTIONS",
    "METHODS",
    "METRICS",
    "SITES",
    "BaseCache",
    "Cancelled",
    "CircuitCurve",
    "Faithfulness",
    "ComponentDetail",
    "Diagnosis",
    "FixResult",
    "ModelLoadError",
    "PromptPairs",
    "Report",
    "TokenPairs",
    "VerifyResult",
    "audit",
    "base_key",
    "check_pairs",
    "diagnose",
    "circuit_curve",
    "faithfulness",
    "inspect",
    "list_models",
    "list_tasks",
    "load_model",
    "screen_flag_fix",
    "verify",
]
