"""Execution jail for untrusted, model-written code (see docs/sandbox.md)."""

from reasonloop.sandbox.isolation import NAMESPACES, NONE, RLIMITS
from reasonloop.sandbox.records import STATUSES, ExecResult, Limits
from reasonloop.sandbox.runner import IsolationError, Sandbox, isolation_level

__all__ = ["Sandbox", "Limits", "ExecResult", "STATUSES", "IsolationError", "isolation_level",
           "NAMESPACES", "RLIMITS", "NONE"]
