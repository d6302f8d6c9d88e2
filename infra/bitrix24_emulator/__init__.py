"""A fast, faithful Bitrix24 portal + OAuth server emulator for tests, benchmarks and the local stack."""

from bitrix24_emulator.clock import Clock
from bitrix24_emulator.config import EmulatorConfig
from bitrix24_emulator.emulator import Emulator

__all__ = ["Clock", "Emulator", "EmulatorConfig"]
