"""The no-Docker local stack: moto, the Bitrix24 emulator, and API Gateway / Lambda fronts from template.yaml."""

from local_stack.config import DEFAULT_PORTS, PortInUseError, StackConfig
from local_stack.event_sources import BatchOutcome, DrainReport
from local_stack.runtime import InvocationResult
from local_stack.stack import FunctionError, LocalStack, ScheduleRun, StackInfo

__all__ = [
    "DEFAULT_PORTS",
    "BatchOutcome",
    "DrainReport",
    "FunctionError",
    "InvocationResult",
    "LocalStack",
    "PortInUseError",
    "ScheduleRun",
    "StackConfig",
    "StackInfo",
]
